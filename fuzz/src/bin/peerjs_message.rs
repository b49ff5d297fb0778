fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::peerjs_message(data));
}
