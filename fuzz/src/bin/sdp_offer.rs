fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::sdp_offer(data));
}
