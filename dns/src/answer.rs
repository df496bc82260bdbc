//! The pure answer function: a question (name, type) against a [`DnsView`] gives an [`Answer`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use crate::config::DnsConfig;

/// One instance behind a DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The instance's address (IPv4 answers A, IPv6 answers AAAA).
    pub address: IpAddr,
    /// The instance's port (answered in SRV).
    pub port: u16,
    /// The instance's health status.
    pub healthy: bool,
}

/// The names this server answers: lowercase fully qualified names with their endpoints, and the
/// zones it is authoritative for.
#[derive(Debug, Clone, Default)]
pub struct DnsView {
    zones: Vec<Name>,
    names: HashMap<Name, Vec<Endpoint>>,
    /// Names that exist only because a longer name is below them (empty non-terminals).
    interior: HashSet<Name>,
    serial: u32,
}

/// The result of [`answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR. Empty `answers` with the zone's SOA in `authority` is NODATA.
    Records {
        /// Answer section.
        answers: Vec<Record>,
        /// Authority section (the SOA for NODATA).
        authority: Vec<Record>,
        /// Additional section (addresses of SRV targets).
        additionals: Vec<Record>,
    },
    /// NXDOMAIN: the name is inside an authoritative zone but does not exist.
    NxDomain {
        /// The zone's SOA, for the authority section.
        soa: Record,
    },
    /// The name is outside every zone this server is authoritative for.
    Refused,
}

fn parse_fqdn(name: &str) -> Option<Name> {
    let mut s = name.trim().to_string();
    if !s.ends_with('.') {
        s.push('.');
    }
    Name::from_ascii(&s).ok().map(|n| n.to_lowercase())
}

impl DnsView {
    /// A view authoritative for `zones` (e.g. `ns.local`, `mesh.local.`); unparsable zones are
    /// ignored with a warning.
    pub fn new(zones: Vec<String>) -> Self {
        let mut parsed: Vec<Name> = Vec::new();
        for z in zones {
            match parse_fqdn(&z) {
                Some(n) if !parsed.contains(&n) => parsed.push(n),
                Some(_) => {}
                None => tracing::warn!(zone = %z, "ignoring unparsable DNS zone"),
            }
        }
        Self {
            zones: parsed,
            serial: 1,
            ..Self::default()
        }
    }

    /// Sets the endpoints of `name` (case-insensitive, trailing dot optional), replacing any
    /// previous ones. Unparsable names are ignored with a warning.
    pub fn insert(&mut self, name: &str, endpoints: Vec<Endpoint>) {
        let Some(n) = parse_fqdn(name) else {
            tracing::warn!(name, "ignoring unparsable DNS name");
            return;
        };
        let mut parent = n.base_name();
        while parent.num_labels() > 0 {
            self.interior.insert(parent.clone());
            parent = parent.base_name();
        }
        self.names.insert(n, endpoints);
        self.serial = self.serial.wrapping_add(1);
    }

    /// Removes `name`; returns whether it was present. (Its parent names stay known as empty
    /// non-terminals, answering NODATA rather than NXDOMAIN, until the view is rebuilt.)
    pub fn remove(&mut self, name: &str) -> bool {
        let removed = parse_fqdn(name).is_some_and(|n| self.names.remove(&n).is_some());
        if removed {
            self.serial = self.serial.wrapping_add(1);
        }
        removed
    }

    /// The SOA serial: grows with every change (and across [`SharedView::replace`]).
    ///
    /// [`SharedView::replace`]: crate::SharedView::replace
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Whether `other` answers every question the same way, serial aside.
    pub(crate) fn same_content(&self, other: &DnsView) -> bool {
        self.zones == other.zones && self.names == other.names && self.interior == other.interior
    }

    /// Makes this view's serial follow `previous`'s, so that the serial of a replacing view
    /// still grows (secondaries and caches compare serials).
    pub(crate) fn follow_serial(&mut self, previous: u32) {
        let next = previous.wrapping_add(1);
        // RFC 1982 serial arithmetic: `next` is "greater" when within half the range ahead.
        if next.wrapping_sub(self.serial) < 1 << 31 {
            self.serial = next;
        }
    }

    /// The most specific zone containing `name` (lowercase).
    fn zone_of(&self, name: &Name) -> Option<&Name> {
        self.zones
            .iter()
            .filter(|z| z.zone_of(name))
            .max_by_key(|z| z.num_labels())
    }
}

/// The target name used in SRV answers for `ip` inside `zone`: `<hex>.addr.<zone>` (8 hex digits
/// for IPv4, 32 for IPv6). These names resolve to `ip` with A/AAAA.
pub fn addr_target(ip: IpAddr, zone: &Name) -> Name {
    let hex: String = match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    };
    let prefix = Name::from_ascii(format!("{hex}.addr")).expect("hex labels are valid");
    prefix.append_domain(zone).unwrap_or_else(|_| zone.clone())
}

/// Decodes `<hex>.addr.<zone>` back to an address.
fn parse_addr_target(name: &Name, zone: &Name) -> Option<IpAddr> {
    if name.num_labels() != zone.num_labels() + 2 {
        return None;
    }
    let mut labels = name.iter();
    let hex = std::str::from_utf8(labels.next()?).ok()?;
    if !labels.next()?.eq_ignore_ascii_case(b"addr") {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let bytes = bytes?;
    match (hex.len(), bytes.len()) {
        (8, 4) => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        (32, 16) => {
            let arr: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(arr)))
        }
        _ => None,
    }
}

fn addr_record(name: Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name, ttl, RData::AAAA(AAAA(v6))),
    }
}

fn soa_record(view: &DnsView, cfg: &DnsConfig, zone: &Name) -> Record {
    let label = |l: &str| {
        Name::from_ascii(l)
            .ok()
            .and_then(|p| p.append_domain(zone).ok())
            .unwrap_or_else(|| zone.clone())
    };
    let soa = SOA::new(
        label("ns"),
        label("hostmaster"),
        view.serial,
        3600,
        600,
        86400,
        cfg.ttl,
    );
    Record::from_rdata(zone.clone(), cfg.ttl, RData::SOA(soa))
}

/// Answers `qname`/`qtype` from `view` (see the crate docs and issue 4 for the rules):
/// A/AAAA/SRV of the healthy endpoints (all of them if none is healthy), NODATA with SOA for
/// other types of known names, NXDOMAIN with SOA for unknown names in a zone, REFUSED outside.
pub fn answer(view: &DnsView, cfg: &DnsConfig, qname: &Name, qtype: RecordType) -> Answer {
    let mut q = qname.to_lowercase();
    q.set_fqdn(true);
    let Some(zone) = view.zone_of(&q) else {
        return Answer::Refused;
    };
    let ttl = cfg.ttl;
    let soa = soa_record(view, cfg, zone);
    let nodata = |soa: Record| Answer::Records {
        answers: Vec::new(),
        authority: vec![soa],
        additionals: Vec::new(),
    };
    let records = |answers: Vec<Record>, additionals: Vec<Record>, soa: Record| {
        if answers.is_empty() {
            nodata(soa)
        } else {
            Answer::Records {
                answers,
                authority: Vec::new(),
                additionals,
            }
        }
    };

    if let Some(all) = view.names.get(&q) {
        let healthy: Vec<&Endpoint> = all.iter().filter(|e| e.healthy).collect();
        let selected: Vec<&Endpoint> = if healthy.is_empty() {
            all.iter().collect()
        } else {
            healthy
        };
        let mut seen_ips = HashSet::new();
        return match qtype {
            RecordType::A | RecordType::AAAA => {
                let answers = selected
                    .iter()
                    .map(|e| e.address)
                    .filter(|ip| match qtype {
                        RecordType::A => ip.is_ipv4(),
                        _ => ip.is_ipv6(),
                    })
                    .filter(|ip| seen_ips.insert(*ip))
                    .map(|ip| addr_record(q.clone(), ttl, ip))
                    .collect();
                records(answers, Vec::new(), soa)
            }
            RecordType::SRV => {
                let mut seen = HashSet::new();
                let mut answers = Vec::new();
                let mut additionals = Vec::new();
                for e in selected {
                    if !seen.insert((e.address, e.port)) {
                        continue;
                    }
                    let target = addr_target(e.address, zone);
                    if seen_ips.insert(e.address) {
                        additionals.push(addr_record(target.clone(), ttl, e.address));
                    }
                    let srv = SRV::new(1, 1, e.port, target);
                    answers.push(Record::from_rdata(q.clone(), ttl, RData::SRV(srv)));
                }
                records(answers, additionals, soa)
            }
            _ => nodata(soa),
        };
    }

    if let Some(ip) = parse_addr_target(&q, zone) {
        let answers = match (qtype, ip) {
            (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_)) => {
                vec![addr_record(q.clone(), ttl, ip)]
            }
            _ => Vec::new(),
        };
        return records(answers, Vec::new(), soa);
    }

    if &q == zone {
        return match qtype {
            RecordType::SOA => Answer::Records {
                answers: vec![soa],
                authority: Vec::new(),
                additionals: Vec::new(),
            },
            _ => nodata(soa),
        };
    }
    if view.interior.contains(&q) {
        return nodata(soa);
    }
    Answer::NxDomain { soa }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, port: u16, healthy: bool) -> Endpoint {
        Endpoint {
            address: ip.parse().unwrap(),
            port,
            healthy,
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn view() -> DnsView {
        let mut v = DnsView::new(vec!["ns.local".into(), "mesh.example.com.".into()]);
        v.insert(
            "Web.NS.local",
            vec![
                ep("10.0.0.1", 8080, true),
                ep("10.0.0.2", 8080, false),
                ep("fd00::1", 8081, true),
            ],
        );
        v.insert(
            "down.ns.local.",
            vec![ep("10.0.0.3", 80, false), ep("10.0.0.4", 80, false)],
        );
        v.insert("api.mesh.example.com", vec![ep("10.1.0.1", 9000, true)]);
        v
    }

    fn answers(a: Answer) -> Vec<Record> {
        match a {
            Answer::Records { answers, .. } => answers,
            other => panic!("expected records, got {other:?}"),
        }
    }

    fn ips(records: &[Record]) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_returns_healthy_ipv4_case_insensitive() {
        let cfg = DnsConfig::default();
        let a = answers(answer(&view(), &cfg, &name("WEB.ns.LOCAL."), RecordType::A));
        assert_eq!(ips(&a), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a[0].ttl, 5);
    }

    #[test]
    fn aaaa_returns_ipv6() {
        let a = answers(answer(
            &view(),
            &DnsConfig::default(),
            &name("web.ns.local."),
            RecordType::AAAA,
        ));
        assert_eq!(ips(&a), vec!["fd00::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn none_healthy_returns_all() {
        let a = answers(answer(
            &view(),
            &DnsConfig::default(),
            &name("down.ns.local."),
            RecordType::A,
        ));
        assert_eq!(ips(&a).len(), 2);
    }

    #[test]
    fn srv_targets_resolve() {
        let v = view();
        let cfg = DnsConfig {
            ttl: 7,
            ..DnsConfig::default()
        };
        let Answer::Records {
            answers,
            additionals,
            ..
        } = answer(&v, &cfg, &name("web.ns.local."), RecordType::SRV)
        else {
            panic!("expected records");
        };
        assert_eq!(answers.len(), 2);
        assert_eq!(additionals.len(), 2);
        for r in &answers {
            let RData::SRV(srv) = &r.data else {
                panic!("not SRV")
            };
            assert_eq!((srv.priority, srv.weight), (1, 1));
            assert!(srv.port == 8080 || srv.port == 8081);
            let qt = if srv.port == 8080 {
                RecordType::A
            } else {
                RecordType::AAAA
            };
            let resolved = answers_of(answer(&v, &cfg, &srv.target, qt));
            assert_eq!(resolved.len(), 1, "target {} resolves", srv.target);
        }
        assert_eq!(
            addr_target("10.0.0.1".parse().unwrap(), &name("ns.local.")),
            name("0a000001.addr.ns.local.")
        );
    }

    fn answers_of(a: Answer) -> Vec<Record> {
        answers(a)
    }

    #[test]
    fn other_types_are_nodata_with_soa() {
        let cfg = DnsConfig {
            ttl: 9,
            ..DnsConfig::default()
        };
        for qt in [RecordType::ANY, RecordType::TXT, RecordType::MX] {
            let Answer::Records {
                answers, authority, ..
            } = answer(&view(), &cfg, &name("web.ns.local."), qt)
            else {
                panic!("expected NODATA");
            };
            assert!(answers.is_empty());
            let RData::SOA(soa) = &authority[0].data else {
                panic!("not SOA")
            };
            assert_eq!(soa.minimum, 9);
            assert_eq!(soa.mname, name("ns.ns.local."));
            assert_eq!(soa.rname, name("hostmaster.ns.local."));
        }
        // AAAA for a name with only IPv4 endpoints is NODATA too.
        let a = answer(
            &view(),
            &cfg,
            &name("api.mesh.example.com."),
            RecordType::AAAA,
        );
        assert!(
            matches!(a, Answer::Records { answers, authority, .. } if answers.is_empty() && authority.len() == 1)
        );
    }

    #[test]
    fn unknown_in_zone_is_nxdomain() {
        let a = answer(
            &view(),
            &DnsConfig::default(),
            &name("nope.ns.local."),
            RecordType::A,
        );
        let Answer::NxDomain { soa } = a else {
            panic!("expected NXDOMAIN, got {a:?}")
        };
        assert_eq!(soa.name, name("ns.local."));
        // bad addr targets are NXDOMAIN too
        assert!(matches!(
            answer(
                &view(),
                &DnsConfig::default(),
                &name("zz000001.addr.ns.local."),
                RecordType::A
            ),
            Answer::NxDomain { .. }
        ));
    }

    #[test]
    fn outside_zones_is_refused() {
        assert_eq!(
            answer(
                &view(),
                &DnsConfig::default(),
                &name("example.org."),
                RecordType::A
            ),
            Answer::Refused
        );
        assert_eq!(
            answer(
                &view(),
                &DnsConfig::default(),
                &name("example.com."),
                RecordType::A
            ),
            Answer::Refused
        );
    }

    #[test]
    fn apex_and_interior_names() {
        let v = view();
        let cfg = DnsConfig::default();
        let soa = answers(answer(&v, &cfg, &name("ns.local."), RecordType::SOA));
        assert_eq!(soa.len(), 1);
        // "example.com." interior of the zone is outside it; "mesh.example.com." apex is NODATA.
        assert!(matches!(
            answer(&v, &cfg, &name("mesh.example.com."), RecordType::A),
            Answer::Records { answers, .. } if answers.is_empty()
        ));
    }

    #[test]
    fn serial_grows_and_remove_works() {
        let mut v = view();
        let s = v.serial();
        assert!(v.remove("web.ns.local"));
        assert!(v.serial() > s);
        assert!(matches!(
            answer(
                &v,
                &DnsConfig::default(),
                &name("web.ns.local."),
                RecordType::A
            ),
            Answer::NxDomain { .. }
        ));
    }
}
