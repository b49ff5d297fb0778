fn main() {
    afl::fuzz!(|data: &[u8]| vessel::fuzzing::chat_message(data));
}
