//! IPv4 address management: subnets as Docker writes them, the pools new networks take
//! their subnets from, and the addresses containers get inside a subnet.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// An IPv4 subnet (`172.18.0.0/16`): its base address (host bits zero) and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

/// Why a subnet or address was refused (Docker's wording where Docker has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid CIDR address: {0}")]
    Cidr(String),
    #[error("invalid address: {0}")]
    Address(String),
    #[error("berth networks are IPv4: {0} is not an IPv4 subnet")]
    NotIpv4(String),
    #[error("subnet {0} is too small: a network needs room for a gateway and containers (a /30 at most)")]
    TooSmall(String),
    #[error("no matching subnet for gateway {0}")]
    GatewayOutside(String),
    #[error("no matching subnet for range {0}")]
    RangeOutside(String),
    #[error("Pool overlaps with other one on this address space")]
    Overlaps,
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")]
    PoolsExhausted,
    #[error("no available IPv4 addresses on this network's address pools: {0}")]
    Exhausted(String),
    #[error("Address already in use")]
    InUse,
    #[error("invalid address {address}: it is not in the network's subnet {subnet}")]
    OutsideSubnet { address: String, subnet: String },
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = IpamError;
    /// `a.b.c.d/n`; host bits given are cleared, as Docker does.
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| IpamError::Cidr(s.to_string()))?;
        if addr.contains(':') {
            return Err(IpamError::NotIpv4(s.to_string()));
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| IpamError::Cidr(s.to_string()))?;
        let prefix: u8 = prefix.parse().map_err(|_| IpamError::Cidr(s.to_string()))?;
        if prefix > 32 {
            return Err(IpamError::Cidr(s.to_string()));
        }
        if prefix > 30 {
            return Err(IpamError::TooSmall(s.to_string()));
        }
        Ok(Subnet::new(addr, prefix))
    }
}

impl Subnet {
    /// The subnet of `addr` with `prefix` bits.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Subnet {
        Subnet {
            base: Ipv4Addr::from(u32::from(addr) & Self::mask_of(prefix)),
            prefix,
        }
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn mask(&self) -> u32 {
        Self::mask_of(self.prefix)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.base)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The first and last addresses a host may have (not the network or broadcast ones).
    pub fn host_range(&self) -> (u32, u32) {
        let base = u32::from(self.base);
        (base + 1, (base | !self.mask()) - 1)
    }

    /// The first host address: Docker's default gateway.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.host_range().0)
    }
}

/// The pools Docker takes new networks' subnets from, in order: the default bridge's
/// 172.17.0.0/16 first, then 172.18-31.0.0/16, then 192.168.0.0/16 in /20s.
pub fn default_pools() -> impl Iterator<Item = Subnet> {
    let sixteens = (17..=31).map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let twenties = (0..16).map(|i| Subnet::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    sixteens.chain(twenties)
}

/// The first default pool that overlaps none of `taken`.
pub fn next_free_pool(taken: &[Subnet]) -> Result<Subnet, IpamError> {
    default_pools()
        .find(|p| !taken.iter().any(|t| t.overlaps(p)))
        .ok_or(IpamError::PoolsExhausted)
}

/// The first address of `range` (or of `subnet`, if no range) that is a host address of
/// `subnet` and not in `used`.
pub fn allocate(
    subnet: &Subnet,
    range: Option<&Subnet>,
    used: &HashSet<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let (lo, hi) = subnet.host_range();
    let (rlo, rhi) = match range {
        Some(r) => {
            let (a, b) = r.host_range();
            // A range's own network and broadcast addresses are fine hosts of the subnet.
            (a - 1, b + 1)
        }
        None => (lo, hi),
    };
    (rlo.max(lo)..=rhi.min(hi))
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
        .ok_or_else(|| IpamError::Exhausted(subnet.to_string()))
}

/// Checks an address asked for by `--ip`: inside the subnet, a host address, free.
pub fn claim(
    subnet: &Subnet,
    addr: Ipv4Addr,
    used: &HashSet<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let (lo, hi) = subnet.host_range();
    if !subnet.contains(addr) || !(lo..=hi).contains(&u32::from(addr)) {
        return Err(IpamError::OutsideSubnet {
            address: addr.to_string(),
            subnet: subnet.to_string(),
        });
    }
    if used.contains(&addr) {
        return Err(IpamError::InUse);
    }
    Ok(addr)
}

/// The MAC address Docker derives from a container's IPv4 address: 02:42 and the four
/// address bytes, so that it is unique wherever the address is.
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `02:42:ac:11:00:02`.
pub use vmm_launcher::format_mac;

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_parse_as_docker_writes_them() {
        assert_eq!(net("172.18.0.0/16").to_string(), "172.18.0.0/16");
        // Host bits are cleared.
        assert_eq!(net("10.1.2.3/24").to_string(), "10.1.2.0/24");
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/16", "10.0.0/8"] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(IpamError::Cidr(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "fd00::/64".parse::<Subnet>(),
            Err(IpamError::NotIpv4(_))
        ));
        assert!(matches!(
            "10.0.0.0/31".parse::<Subnet>(),
            Err(IpamError::TooSmall(_))
        ));
    }

    #[test]
    fn overlaps_and_pools() {
        assert!(net("10.0.0.0/8").overlaps(&net("10.1.0.0/16")));
        assert!(net("10.1.0.0/16").overlaps(&net("10.0.0.0/8")));
        assert!(!net("10.1.0.0/16").overlaps(&net("10.2.0.0/16")));
        let taken = [net("172.17.0.0/16"), net("172.18.5.0/24")];
        assert_eq!(next_free_pool(&taken).unwrap(), net("172.19.0.0/16"));
        let all: Vec<Subnet> = default_pools().collect();
        assert_eq!(next_free_pool(&all), Err(IpamError::PoolsExhausted));
        assert_eq!(all.last().unwrap(), &net("192.168.240.0/20"));
    }

    #[test]
    fn addresses_come_from_the_range_and_skip_used_ones() {
        let s = net("172.18.0.0/16");
        let mut used = HashSet::from([s.first_host()]);
        assert_eq!(
            allocate(&s, None, &used).unwrap(),
            Ipv4Addr::new(172, 18, 0, 2)
        );
        used.insert(Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(
            allocate(&s, None, &used).unwrap(),
            Ipv4Addr::new(172, 18, 0, 3)
        );
        let r = net("172.18.5.0/24");
        assert_eq!(
            allocate(&s, Some(&r), &used).unwrap(),
            Ipv4Addr::new(172, 18, 5, 0)
        );
        let tiny = net("10.0.0.0/30");
        let used = HashSet::from([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert!(matches!(
            allocate(&tiny, None, &used),
            Err(IpamError::Exhausted(_))
        ));
        assert_eq!(
            claim(&s, Ipv4Addr::new(172, 18, 0, 3), &HashSet::new()).unwrap(),
            Ipv4Addr::new(172, 18, 0, 3)
        );
        assert_eq!(
            claim(
                &s,
                Ipv4Addr::new(172, 18, 0, 3),
                &HashSet::from([Ipv4Addr::new(172, 18, 0, 3)])
            ),
            Err(IpamError::InUse)
        );
        assert!(claim(&s, Ipv4Addr::new(10, 0, 0, 3), &HashSet::new()).is_err());
        assert!(claim(&s, Ipv4Addr::new(172, 18, 255, 255), &HashSet::new()).is_err());
        assert_eq!(
            format_mac(&mac_of(Ipv4Addr::new(172, 17, 0, 2))),
            "02:42:ac:11:00:02"
        );
    }
}
