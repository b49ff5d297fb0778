//! Commands from the HTTP side to a shard's `Sfu`, and how the media
//! thread carries each out.

use super::*;

pub(super) enum Command {
    /// Ends every session (shutdown): peers get a DTLS close_notify.
    CloseAll {
        reply: oneshot::Sender<()>,
    },
    /// A WHIP/WHEP session prepared off the media thread.
    Admit {
        prepared: Box<Prepared>,
        client: Client,
        reply: oneshot::Sender<Joined>,
    },
    Leave {
        live: String,
        role: Role,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NoSuchSession>>,
    },
    Trickle {
        live: String,
        role: Role,
        peer: PeerId,
        candidates: Vec<Candidate>,
        reply: oneshot::Sender<Result<(), NoSuchSession>>,
    },
    Layer {
        live: String,
        peer: PeerId,
        preference: Preference,
        reply: oneshot::Sender<Result<(), NoSuchSession>>,
    },
    AdmitDirect {
        prepared: Box<PreparedDirect>,
        live: String,
        role: Role,
        client: Client,
        reply: oneshot::Sender<DirectTransport>,
    },
    ConnectDirect {
        peer: PeerId,
        fingerprint: Fingerprint,
        reply: oneshot::Sender<Result<(), DirectError>>,
    },
    Produce {
        peer: PeerId,
        produce: Produce,
        reply: oneshot::Sender<Result<Produced, DirectError>>,
    },
    Producers {
        live: String,
        reply: oneshot::Sender<Vec<Producer>>,
    },
    Consume {
        peer: PeerId,
        producer: Producer,
        device_pts: Vec<u8>,
        reply: oneshot::Sender<Result<Consumer, DirectError>>,
    },
    AdmitMember {
        prepared: Box<PreparedMember>,
        room: String,
        client: Client,
        reply: oneshot::Sender<MemberOffer>,
    },
    Member {
        peer: PeerId,
        op: MemberCommand,
    },
    /// Asks the live's caster, if it is on this shard, for a keyframe of
    /// every layer (through the SFU's per-layer limit).
    Keyframes {
        live: String,
    },
    /// Hands a live's caster packets to a consumer (see `sfu::tap`).
    Tap {
        live: String,
        sink: Option<Box<dyn crate::sfu::tap::TapSink>>,
    },
}

/// What a room member's session is asked, once it exists.
pub(super) enum MemberCommand {
    Answer(String, oneshot::Sender<Result<Answered, MemberError>>),
    Offer(
        Vec<Subscription>,
        oneshot::Sender<Result<Option<String>, MemberError>>,
    ),
    Cast(Option<String>, oneshot::Sender<Result<(), MemberError>>),
    Candidate(Candidate),
    Leave,
}

pub(super) fn handle(sfu: &mut Sfu, cmd: Command, sessions: &SessionBook) {
    let now = Instant::now();
    match cmd {
        // The run loop takes this one itself, to flush before replying.
        Command::CloseAll { reply } => {
            sfu.close_all(now);
            let _ = reply.send(());
        }
        Command::Admit {
            prepared,
            client,
            reply,
        } => {
            let (live, role) = (prepared.live().to_string(), prepared.role());
            let joined = sfu.admit_prepared(*prepared, now);
            sessions.opened(joined.peer, &client, &live, role);
            let _ = reply.send(joined);
        }
        Command::Leave {
            live,
            role,
            peer,
            reply,
        } => {
            let _ = reply.send(sfu.leave(&live, role, peer, now));
        }
        Command::Trickle {
            live,
            role,
            peer,
            candidates,
            reply,
        } => {
            let _ = reply.send(sfu.add_remote_candidates(
                &live,
                role,
                peer,
                candidates,
                Instant::now(),
            ));
        }
        Command::Layer {
            live,
            peer,
            preference,
            reply,
        } => {
            let _ = reply.send(sfu.set_preference(&live, peer, preference, now));
        }
        Command::AdmitDirect {
            prepared,
            live,
            role,
            client,
            reply,
        } => {
            let opened = sfu.admit_direct(*prepared, now);
            sessions.opened(opened.peer, &client, &live, role);
            let _ = reply.send(opened);
        }
        Command::ConnectDirect {
            peer,
            fingerprint,
            reply,
        } => {
            let _ = reply.send(sfu.connect_direct(peer, fingerprint, now));
        }
        Command::Produce {
            peer,
            produce,
            reply,
        } => {
            let _ = reply.send(sfu.produce(peer, produce, now));
        }
        Command::Producers { live, reply } => {
            let _ = reply.send(sfu.producers(&live));
        }
        Command::Consume {
            peer,
            producer,
            device_pts,
            reply,
        } => {
            let _ = reply.send(sfu.consume(peer, producer, &device_pts, now));
        }
        Command::AdmitMember {
            prepared,
            room,
            client,
            reply,
        } => {
            let offered = sfu.admit_member(*prepared, now);
            sessions.opened(offered.peer, &client, &room, Role::Play);
            let _ = reply.send(offered);
        }
        Command::Tap { live, sink } => sfu.set_tap(&live, sink),
        Command::Keyframes { live } => sfu.request_keyframes(&live, now),
        Command::Member { peer, op } => match op {
            MemberCommand::Answer(sdp, reply) => {
                let _ = reply.send(sfu.member_answer(peer, &sdp, now));
            }
            MemberCommand::Offer(subs, reply) => {
                let _ = reply.send(sfu.member_offer(peer, &subs, now));
            }
            MemberCommand::Cast(live, reply) => {
                let _ = reply.send(sfu.member_cast(peer, live.as_deref(), now));
            }
            MemberCommand::Candidate(c) => {
                let _ = sfu.member_candidate(peer, c, now);
            }
            MemberCommand::Leave => {
                let _ = sfu.member_leave(peer, now);
            }
        },
    }
}
