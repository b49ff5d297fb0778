//! STUN requests that the harness signs: the fuzzer chooses the
//! transaction id and the attributes, the harness adds what only a real
//! client could (the username and the MESSAGE-INTEGRITY made with the
//! password). Without this, every input would stop at the integrity check.

use stun_types::attribute::{
    Attribute, AttributeStaticType, AttributeWrite, Fingerprint, MessageIntegrity,
    MessageIntegritySha256, RawAttribute,
};
use stun_types::message::{
    IntegrityAlgorithm, Message, MessageClass, MessageType, MessageWrite, MessageWriteExt,
    MessageWriteVec, Method, TransactionId,
};

/// A request of `method`: the transaction id is the first 12 bytes of
/// `body`, the rest is attributes as they are on the wire (the well-formed
/// ones are kept). `first` go before them; then, with `integrity`, a
/// MESSAGE-INTEGRITY (SHA-1) made with it and, with `fingerprint`, a
/// FINGERPRINT.
pub fn request(
    method: Method,
    body: &[u8],
    first: &[&dyn AttributeWrite],
    integrity: Option<&stun_types::message::MessageIntegrityCredentials>,
    fingerprint: bool,
) -> Vec<u8> {
    let (tid, attrs) = body.split_at(body.len().min(12));
    let mut id = [0u8; 16];
    id[4..4 + tid.len()].copy_from_slice(tid);
    let mtype = MessageType::from_class_method(MessageClass::Request, method);
    let mut b = Message::builder(
        mtype,
        TransactionId::from(u128::from_be_bytes(id)),
        MessageWriteVec::new(),
    );
    for a in first {
        let _ = b.add_attribute(*a);
    }
    let mut rest = attrs;
    while let Ok(raw) = RawAttribute::from_bytes(rest) {
        // The builder adds these itself (and panics if asked to add them
        // as plain attributes).
        let own = [
            MessageIntegrity::TYPE,
            MessageIntegritySha256::TYPE,
            Fingerprint::TYPE,
        ];
        if !own.contains(&raw.get_type()) {
            let _ = b.add_attribute(&raw);
        }
        let used = 4 + usize::from(raw.length()).div_ceil(4) * 4;
        rest = rest.get(used..).unwrap_or_default();
    }
    if let Some(credentials) = integrity {
        let _ = b.add_message_integrity(credentials, IntegrityAlgorithm::Sha1);
    }
    if fingerprint {
        let _ = b.add_fingerprint();
    }
    b.finish()
}
