fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::mediasoup_request(data));
}
