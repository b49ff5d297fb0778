fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::sfu_datagram(data));
}
