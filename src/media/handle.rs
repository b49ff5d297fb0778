//! The handle the HTTP side holds: one command channel per shard, the
//! registries of casters, and admission by load.

use super::*;

/// The HTTP side's handle on the media runtime (one worker thread per
/// shard). Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    pub(super) shards: Arc<[mpsc::Sender<Command>]>,
    /// Round-robin placement of new sessions.
    pub(super) next: Arc<AtomicUsize>,
    /// The caster on air of each live (as the media workers tell).
    pub(super) casters: Casters,
    /// Every caster session (WHIP, mediasoup producer transports) and its
    /// live, on air or still proving itself.
    pub(super) cast_sessions: CastSessions,
    /// Sessions held, in all, per client address and per live.
    pub(super) sessions: Arc<SessionBook>,
    /// What preparing a session needs of each shard.
    pub(super) setups: Arc<[Setup]>,
    /// Sessions being prepared at once (one per core).
    pub(super) preparing: Arc<tokio::sync::Semaphore>,
    /// How busy each worker is: new viewers go where there is room.
    pub(super) loads: Arc<Loads>,
}

/// A session on its way to a worker: counted as joining it (the worker
/// cannot see it yet) until it is held there or has failed.
pub(super) struct Placement {
    pub(super) shard: usize,
    pub(super) loads: Arc<Loads>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.loads.joined(self.shard);
    }
}

/// Caster sessions and their lives.
pub(super) type CastSessions = Arc<Mutex<HashMap<PeerId, String>>>;

impl MediaHandle {
    /// The worker for a new session of `role`: round-robin, skipping
    /// workers past `--max-load` for viewers (503 when all are). The
    /// session counts against the worker's room until the placement drops.
    fn place(&self, role: Role) -> Result<Placement, MediaError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let shard = if role == Role::Cast {
            self.loads.joining(start);
            start
        } else {
            self.loads
                .pick(start)
                .ok_or_else(|| MediaError::from(self.sessions.refuse(Limit::Busy)))?
        };
        Ok(Placement {
            shard,
            loads: self.loads.clone(),
        })
    }

    /// Runs `make` (building a session for `shard`: SDP, the Rtc and its
    /// key shares, certificates) on the blocking pool, a few at a time,
    /// never on the thread that forwards media.
    async fn prepare<T, E>(
        &self,
        shard: usize,
        make: impl FnOnce(&Setup, Instant) -> Result<T, E> + Send + 'static,
    ) -> Result<T, MediaError>
    where
        T: Send + 'static,
        E: Send + 'static,
        MediaError: From<E>,
    {
        let setup = self.setups[shard].clone();
        let _permit = self
            .preparing
            .acquire()
            .await
            .map_err(|_| MediaError::Down)?;
        let made = tokio::task::spawn_blocking(move || make(&setup, Instant::now()))
            .await
            .map_err(|_| MediaError::Down)?;
        Ok(made?)
    }

    /// A WHIP/WHEP session for `client` (within the session caps).
    pub async fn join(
        &self,
        live: &str,
        role: Role,
        offer: String,
        client: Client,
    ) -> Result<Joined, MediaError> {
        self.join_with(live, role, offer, client, JoinOptions::default())
            .await
    }

    /// [`Media::join`], with options for casters other than browsers.
    pub async fn join_with(
        &self,
        live: &str,
        role: Role,
        offer: String,
        client: Client,
        options: JoinOptions,
    ) -> Result<Joined, MediaError> {
        self.sessions.check(&client, live, role)?;
        let placed = self.place(role)?;
        let shard = placed.shard;
        let name = live.to_string();
        let prepared = self
            .prepare(shard, move |setup, now| {
                let prepared = if options.relay && role == Role::Play {
                    setup::prepare_relay(setup, &name, &offer, now)
                } else {
                    setup::prepare(setup, &name, role, &offer, now)
                };
                prepared.map(|p| {
                    if options.replay_gop {
                        p.replaying_gop()
                    } else {
                        p
                    }
                })
            })
            .await?;
        let joined = self
            .request(shard, |reply| Command::Admit {
                prepared: Box::new(prepared),
                client,
                reply,
            })
            .await?;
        if role == Role::Cast {
            self.cast_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(joined.peer, live.to_string());
        }
        Ok(joined)
    }

    /// Hands `live`'s caster packets to a consumer made per shard by
    /// `sink` (`None`: stop). Every shard gets one: the caster may be on
    /// any, and move when it is replaced.
    pub async fn tap(
        &self,
        live: &str,
        mut sink: impl FnMut() -> Option<Box<dyn crate::sfu::tap::TapSink>>,
    ) -> Result<(), MediaError> {
        for shard in 0..self.shards.len() {
            let command = Command::Tap {
                live: live.to_string(),
                sink: sink(),
            };
            self.send(shard, command).await?;
        }
        Ok(())
    }

    /// Asks `live`'s caster for a keyframe of every layer (for LL-HLS
    /// segment boundaries), within the SFU's per-layer limit.
    pub async fn request_keyframes(&self, live: &str) -> Result<(), MediaError> {
        for shard in 0..self.shards.len() {
            let command = Command::Keyframes {
                live: live.to_string(),
            };
            self.send(shard, command).await?;
        }
        Ok(())
    }

    /// Whether `peer` is a caster session of `live` (on air or about to be).
    pub fn is_caster(&self, live: &str, peer: PeerId) -> bool {
        self.cast_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .is_some_and(|l| l == live)
    }

    /// Every caster session of `live`.
    pub fn cast_sessions_of(&self, live: &str) -> Vec<PeerId> {
        self.cast_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, l)| *l == live)
            .map(|(p, _)| *p)
            .collect()
    }

    /// A transport for a client that sets up media without SDP
    /// (mediasoup-client).
    pub async fn open_direct(
        &self,
        live: &str,
        role: Role,
        client: Client,
    ) -> Result<DirectTransport, MediaError> {
        self.sessions.check(&client, live, role)?;
        let placed = self.place(role)?;
        let shard = placed.shard;
        let name = live.to_string();
        let prepared = self
            .prepare(shard, move |setup, now| {
                crate::sfu::prepare_direct(setup, &name, role, now)
            })
            .await?;
        let live = live.to_string();
        self.request(shard, |reply| Command::AdmitDirect {
            prepared: Box::new(prepared),
            live,
            role,
            client,
            reply,
        })
        .await
    }

    pub async fn connect_direct(
        &self,
        peer: PeerId,
        fingerprint: Fingerprint,
    ) -> Result<(), MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::ConnectDirect {
                peer,
                fingerprint,
                reply,
            })
            .await??)
    }

    /// Caster transport `peer` sends `produce`; its first producer makes it
    /// a caster, which takes the live once its media flows.
    pub async fn produce(
        &self,
        live: &str,
        peer: PeerId,
        produce: Produce,
    ) -> Result<Producer, MediaError> {
        let produced = self
            .request(peer.shard(), |reply| Command::Produce {
                peer,
                produce,
                reply,
            })
            .await??;
        // The live is taken once its media flows (the SFU tells the other
        // workers itself).
        if produced.took_over {
            self.cast_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer, live.to_string());
        }
        Ok(produced.producer)
    }

    /// What `live`'s caster sends (asked of its shard: only it knows).
    pub async fn producers(&self, live: &str) -> Result<Vec<Producer>, MediaError> {
        let Some(caster) = self.caster(live) else {
            return Ok(Vec::new());
        };
        let live = live.to_string();
        self.request(caster.shard(), |reply| Command::Producers { live, reply })
            .await
    }

    pub async fn consume(
        &self,
        peer: PeerId,
        producer: Producer,
        device_pts: Vec<u8>,
    ) -> Result<Consumer, MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::Consume {
                peer,
                producer,
                device_pts,
                reply,
            })
            .await??)
    }

    /// How busy the media workers are, percent (their mean over the last
    /// second, as `--max-load` measures it).
    pub fn busy_percent(&self) -> u32 {
        let n = self.shards.len().max(1);
        let permille: u64 = (0..n).map(|w| u64::from(self.loads.get(w))).sum();
        (permille / n as u64 / 10) as u32
    }

    /// The live's caster on air, as the media workers last said.
    pub fn caster(&self, live: &str) -> Option<PeerId> {
        self.casters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(live)
            .copied()
    }

    /// Ends every cast of `live`, on air or still proving itself (its key
    /// was revoked).
    pub async fn end_casts(&self, live: &str) {
        let mut casters = self.cast_sessions_of(live);
        casters.extend(self.caster(live));
        casters.sort();
        casters.dedup();
        for caster in casters {
            let _ = self.leave(live, Role::Cast, caster).await;
        }
    }

    pub async fn leave(&self, live: &str, role: Role, peer: PeerId) -> Result<(), MediaError> {
        let live = live.to_string();
        Ok(self
            .request(peer.shard(), |reply| Command::Leave {
                live,
                role,
                peer,
                reply,
            })
            .await??)
    }

    pub async fn trickle(
        &self,
        live: &str,
        role: Role,
        peer: PeerId,
        candidates: Vec<Candidate>,
    ) -> Result<(), MediaError> {
        let live = live.to_string();
        Ok(self
            .request(peer.shard(), |reply| Command::Trickle {
                live,
                role,
                peer,
                candidates,
                reply,
            })
            .await??)
    }

    /// Caps the video layer viewer `peer` gets.
    pub async fn set_layer(
        &self,
        live: &str,
        peer: PeerId,
        preference: Preference,
    ) -> Result<(), MediaError> {
        let live = live.to_string();
        Ok(self
            .request(peer.shard(), |reply| Command::Layer {
                live,
                peer,
                preference,
                reply,
            })
            .await??)
    }

    /// A SkyWay SFU room member's session and its first offer.
    pub async fn open_member(
        &self,
        room: &str,
        subs: Vec<Subscription>,
        client: Client,
    ) -> Result<MemberOffer, MediaError> {
        self.sessions.check(&client, room, Role::Play)?;
        let placed = self.place(Role::Play)?;
        let shard = placed.shard;
        let name = room.to_string();
        let prepared = self
            .prepare(shard, move |setup, now| {
                crate::sfu::prepare_member(setup, &name, &subs, now)
            })
            .await?;
        let room = room.to_string();
        self.request(shard, |reply| Command::AdmitMember {
            prepared: Box::new(prepared),
            room,
            client,
            reply,
        })
        .await
    }

    pub async fn member_answer(&self, peer: PeerId, sdp: String) -> Result<Answered, MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::Member {
                peer,
                op: MemberCommand::Answer(sdp, reply),
            })
            .await??)
    }

    /// Offers `subs` to a member; `None` if nothing changed.
    pub async fn member_offer(
        &self,
        peer: PeerId,
        subs: Vec<Subscription>,
    ) -> Result<Option<String>, MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::Member {
                peer,
                op: MemberCommand::Offer(subs, reply),
            })
            .await??)
    }

    /// A member publishes into `live` (or stops, with `None`).
    pub async fn member_cast(&self, peer: PeerId, live: Option<&str>) -> Result<(), MediaError> {
        let name = live.map(str::to_string);
        self.request(peer.shard(), |reply| Command::Member {
            peer,
            op: MemberCommand::Cast(name, reply),
        })
        .await??;
        Ok(())
    }

    pub async fn member_candidate(&self, peer: PeerId, candidate: Candidate) {
        let op = MemberCommand::Candidate(candidate);
        let _ = self.send(peer.shard(), Command::Member { peer, op }).await;
    }

    pub async fn member_leave(&self, peer: PeerId) {
        let op = MemberCommand::Leave;
        let _ = self.send(peer.shard(), Command::Member { peer, op }).await;
    }

    /// Ends every session on every shard (shutdown).
    pub async fn close_all(&self) {
        for shard in 0..self.shards.len() {
            let _ = self
                .request(shard, |reply| Command::CloseAll { reply })
                .await;
        }
    }

    /// Sends a command that wants no reply.
    async fn send(&self, shard: usize, command: Command) -> Result<(), MediaError> {
        let tx = self.shards.get(shard).ok_or(NoSuchSession)?;
        tx.send(command).await.map_err(|_| MediaError::Down)
    }

    /// Sends a command and waits for the media thread's reply.
    async fn request<T>(
        &self,
        shard: usize,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        let Some(tx) = self.shards.get(shard) else {
            return Err(NoSuchSession.into());
        };
        let (reply, rx) = oneshot::channel();
        tx.send(command(reply))
            .await
            .map_err(|_| MediaError::Down)?;
        rx.await.map_err(|_| MediaError::Down)
    }
}
