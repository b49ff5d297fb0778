fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::skyway_message(data));
}
