fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::rfc4571(data));
}
