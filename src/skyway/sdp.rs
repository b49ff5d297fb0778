//! The one thing the signaling server reads in a mesh room's SDP: whether
//! it sends media. Mesh media never touches Vessel, so this is where a
//! keyed live's rule (casting needs the stream key) is kept.

/// True if an audio or video section of `sdp` (offer or answer) sends:
/// `a=sendrecv` or `a=sendonly`, or no direction (sendrecv by default),
/// on a port other than 0.
pub fn sends_media(sdp: &str) -> bool {
    let mut sends = false;
    let mut in_media = false;
    let mut direction: Option<&str> = None;
    let mut open = false;
    let mut close = |in_media: bool, open: bool, direction: Option<&str>| {
        if in_media && open && matches!(direction.unwrap_or("sendrecv"), "sendrecv" | "sendonly") {
            sends = true;
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            close(in_media, open, direction);
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            in_media = kind == "audio" || kind == "video";
            open = port != "0";
            direction = None;
        } else if in_media
            && let Some(a) = line.strip_prefix("a=")
            && matches!(a, "sendrecv" | "sendonly" | "recvonly" | "inactive")
        {
            direction = Some(a);
        }
    }
    close(in_media, open, direction);
    sends
}

#[cfg(test)]
mod tests {
    use super::sends_media;

    const HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn directions_decide() {
        let sdp = |body: &str| format!("{HEAD}{body}");
        assert!(!sends_media(&sdp(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n"
        )));
        assert!(sends_media(&sdp(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n"
        )));
        assert!(sends_media(&sdp(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n"
        )));
        assert!(
            sends_media(&sdp("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n")),
            "no direction is sendrecv"
        );
        assert!(!sends_media(&sdp(
            "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n"
        )));
        assert!(!sends_media(&sdp(
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        )));
        assert!(!sends_media(&sdp("m=audio 9 RTP/AVP 0\r\na=inactive\r\n")));
        assert!(!sends_media("garbage"));
    }
}
