//! Command-line flags and their `VESSEL_*` environment twins.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "vessel",
    version,
    about = "Vessel: a self-hosted live streaming server (WHIP/WHEP, WebRTC SFU, built-in pages)",
    after_help = "Every flag can also be set by its environment variable, e.g. VESSEL_HTTP=0.0.0.0:8080.\n\
                  Logs: RUST_LOG=vessel=debug for more detail."
)]
pub struct Config {
    /// HTTP listen address (pages, WHIP/WHEP, API).
    #[arg(long, env = "VESSEL_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// The one UDP address that carries every peer's media.
    #[arg(long, env = "VESSEL_MEDIA", default_value = "127.0.0.1:8189")]
    pub media: SocketAddr,

    /// Address announced in ICE candidates (repeatable), e.g. the server's
    /// public IP behind a 1:1 NAT. Default: the --media address, or every
    /// interface address when --media is 0.0.0.0.
    #[arg(long = "public-ip", env = "VESSEL_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<IpAddr>,

    /// Origins allowed to call WHIP/WHEP and the API from a browser
    /// (repeatable; `*` for any).
    #[arg(
        long = "cors-origin",
        env = "VESSEL_CORS_ORIGIN",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_origin: Vec<String>,
}

impl Config {
    /// The media addresses announced to clients as ICE host candidates.
    pub fn announced_media_addrs(&self) -> Vec<SocketAddr> {
        let port = self.media.port();
        if !self.public_ip.is_empty() {
            return self
                .public_ip
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
        }
        if !self.media.ip().is_unspecified() {
            return vec![self.media];
        }
        let v4 = self.media.is_ipv4();
        let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| ip.is_ipv4() == v4 && !ip.is_loopback())
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            let lo: IpAddr = if v4 {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            };
            addrs.push(SocketAddr::new(lo, port));
        }
        addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_stay_on_loopback() {
        let c = Config::try_parse_from(["vessel"]).unwrap();
        assert_eq!(c.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.media, "127.0.0.1:8189".parse().unwrap());
        assert_eq!(c.announced_media_addrs(), vec![c.media]);
    }

    #[test]
    fn public_ips_replace_the_announced_address() {
        let c = Config::try_parse_from([
            "vessel",
            "--media",
            "0.0.0.0:9000",
            "--public-ip",
            "203.0.113.7",
            "--public-ip",
            "198.51.100.1",
        ])
        .unwrap();
        assert_eq!(
            c.announced_media_addrs(),
            vec![
                "203.0.113.7:9000".parse().unwrap(),
                "198.51.100.1:9000".parse().unwrap()
            ]
        );
    }
}
