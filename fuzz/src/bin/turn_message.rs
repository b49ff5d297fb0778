fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::turn_message(data));
}
