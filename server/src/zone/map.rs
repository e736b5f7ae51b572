//! The zone map: which zone process owns which region of the world, and where each zone's
//! control plane and UDP edge listen. Every process of a zoned world reads the same map
//! (`--zone-map zones.toml`); it is operator input, checked whole before a server starts.
//!
//! ```toml
//! # Four zones of a 4 km world, split at x = 0 and y = 0.
//! [[zone]]
//! id = 0
//! min = [-2000.0, -2000.0]
//! max = [0.0, 0.0]
//! http = "127.0.0.1:3100"
//! udp = "127.0.0.1:7100"
//! ```
//!
//! A region is a rectangle on the world plane, `min` inclusive and `max` exclusive on both
//! axes, so a point on a shared edge belongs to exactly one zone. Regions may not overlap;
//! they need not cover the world (a point in no region stays with the zone it is in).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A zone's number in its map. Zone ids go into keys that cross zones (the top 16 bits of a
/// row id), so they are below [`MAX_ZONE_ID`].
pub type ZoneId = u16;

/// The largest zone id plus one.
pub const MAX_ZONE_ID: u32 = 1 << 16;
/// Zones in one map at most.
pub const MAX_ZONES: usize = 1024;
/// The largest zone-map file read, bytes.
pub const MAX_ZONE_MAP_BYTES: u64 = 256 * 1024;

/// What is wrong with a zone map.
#[derive(Debug, thiserror::Error)]
pub enum ZoneMapError {
    /// The file could not be read.
    #[error("cannot read zone map {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_ZONE_MAP_BYTES`].
    #[error("zone map {path} has {bytes} bytes, more than the {MAX_ZONE_MAP_BYTES} allowed")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Not TOML, or not the map's shape.
    #[error("zone map is not valid: {0}")]
    Syntax(String),
    /// No `[[zone]]` entries.
    #[error("zone map has no zones")]
    Empty,
    /// More than [`MAX_ZONES`] zones.
    #[error("zone map has {0} zones, more than the {MAX_ZONES} allowed")]
    TooManyZones(usize),
    /// A zone id at or above [`MAX_ZONE_ID`].
    #[error("zone id {0} is out of range (ids are below {MAX_ZONE_ID})")]
    IdOutOfRange(u32),
    /// Two zones with one id.
    #[error("zone id {0} appears twice")]
    DuplicateId(ZoneId),
    /// A region with a non-finite corner or `min` not below `max`.
    #[error("zone {id}'s region {min:?}..{max:?} is empty or not finite")]
    BadRegion {
        /// The zone.
        id: ZoneId,
        /// Its `min` corner.
        min: [f32; 2],
        /// Its `max` corner.
        max: [f32; 2],
    },
    /// Two regions share area.
    #[error("the regions of zones {0} and {1} overlap")]
    Overlap(ZoneId, ZoneId),
    /// Two zones listen on one address.
    #[error("zones {first} and {second} both use {addr}")]
    SharedAddress {
        /// The first zone using it.
        first: ZoneId,
        /// The second.
        second: ZoneId,
        /// The address.
        addr: SocketAddr,
    },
    /// `--zone N` names no zone of the map.
    #[error("zone {0} is not in the zone map")]
    UnknownZone(u32),
}

/// One zone of a [`ZoneMap`].
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSpec {
    /// Its id.
    pub id: ZoneId,
    /// The region's lower corner (inclusive), metres.
    pub min: [f32; 2],
    /// The region's upper corner (exclusive), metres.
    pub max: [f32; 2],
    /// Where its HTTP control plane listens (handoffs and connect tokens go there).
    pub http: SocketAddr,
    /// Where its UDP edge listens.
    pub udp: SocketAddr,
}

impl ZoneSpec {
    /// Whether `point` lies in the region (`min` inclusive, `max` exclusive).
    pub fn contains(&self, point: [f32; 2]) -> bool {
        (0..2).all(|axis| point[axis] >= self.min[axis] && point[axis] < self.max[axis])
    }

    fn overlaps(&self, other: &ZoneSpec) -> bool {
        (0..2).all(|axis| self.min[axis] < other.max[axis] && other.min[axis] < self.max[axis])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    zone: Vec<ZoneFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneFile {
    id: u32,
    min: [f32; 2],
    max: [f32; 2],
    http: SocketAddr,
    udp: SocketAddr,
}

/// The regions of a zoned world and the zone processes that own them, ordered by id.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneMap {
    zones: Vec<ZoneSpec>,
}

impl ZoneMap {
    /// Reads and checks the map in `path`.
    pub fn load(path: &Path) -> Result<Self, ZoneMapError> {
        let io = |source| ZoneMapError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(io)?.len();
        if bytes > MAX_ZONE_MAP_BYTES {
            return Err(ZoneMapError::TooLarge {
                path: path.to_owned(),
                bytes,
            });
        }
        Self::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// Parses and checks a map.
    pub fn parse(text: &str) -> Result<Self, ZoneMapError> {
        let file: MapFile =
            toml::from_str(text).map_err(|e| ZoneMapError::Syntax(e.message().to_owned()))?;
        let zones = file
            .zone
            .into_iter()
            .map(|zone| {
                let id =
                    ZoneId::try_from(zone.id).map_err(|_| ZoneMapError::IdOutOfRange(zone.id))?;
                Ok(ZoneSpec {
                    id,
                    min: zone.min,
                    max: zone.max,
                    http: zone.http,
                    udp: zone.udp,
                })
            })
            .collect::<Result<Vec<_>, ZoneMapError>>()?;
        Self::new(zones)
    }

    /// Checks `zones` and orders them by id.
    pub fn new(mut zones: Vec<ZoneSpec>) -> Result<Self, ZoneMapError> {
        if zones.is_empty() {
            return Err(ZoneMapError::Empty);
        }
        if zones.len() > MAX_ZONES {
            return Err(ZoneMapError::TooManyZones(zones.len()));
        }
        zones.sort_by_key(|zone| zone.id);
        for pair in zones.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(ZoneMapError::DuplicateId(pair[0].id));
            }
        }
        for zone in &zones {
            let finite = zone.min.iter().chain(&zone.max).all(|v| v.is_finite());
            if !finite || (0..2).any(|axis| zone.min[axis] >= zone.max[axis]) {
                return Err(ZoneMapError::BadRegion {
                    id: zone.id,
                    min: zone.min,
                    max: zone.max,
                });
            }
        }
        for (i, a) in zones.iter().enumerate() {
            for b in &zones[i + 1..] {
                if a.overlaps(b) {
                    return Err(ZoneMapError::Overlap(a.id, b.id));
                }
                let shared = [
                    (a.http, b.http),
                    (a.udp, b.udp),
                    (a.http, b.udp),
                    (a.udp, b.http),
                ];
                if let Some(&(addr, _)) = shared.iter().find(|(x, y)| x == y) {
                    return Err(ZoneMapError::SharedAddress {
                        first: a.id,
                        second: b.id,
                        addr,
                    });
                }
            }
        }
        Ok(ZoneMap { zones })
    }

    /// The zones, by id.
    pub fn zones(&self) -> &[ZoneSpec] {
        &self.zones
    }

    /// The zone with id `id`.
    pub fn get(&self, id: u32) -> Result<&ZoneSpec, ZoneMapError> {
        self.zones
            .binary_search_by_key(&id, |zone| u32::from(zone.id))
            .map(|i| &self.zones[i])
            .map_err(|_| ZoneMapError::UnknownZone(id))
    }

    /// The zone whose region holds `point`, if any.
    pub fn zone_at(&self, point: [f32; 2]) -> Option<&ZoneSpec> {
        self.zones.iter().find(|zone| zone.contains(point))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FOUR: &str = r#"
        [[zone]]
        id = 0
        min = [-2000.0, -2000.0]
        max = [0.0, 0.0]
        http = "127.0.0.1:3100"
        udp = "127.0.0.1:7100"
        [[zone]]
        id = 1
        min = [0.0, -2000.0]
        max = [2000.0, 0.0]
        http = "127.0.0.1:3101"
        udp = "127.0.0.1:7101"
        [[zone]]
        id = 3
        min = [0.0, 0.0]
        max = [2000.0, 2000.0]
        http = "127.0.0.1:3103"
        udp = "127.0.0.1:7103"
        [[zone]]
        id = 2
        min = [-2000.0, 0.0]
        max = [0.0, 2000.0]
        http = "127.0.0.1:3102"
        udp = "127.0.0.1:7102"
    "#;

    #[test]
    fn a_point_on_a_shared_edge_belongs_to_exactly_one_zone() {
        let map = ZoneMap::parse(FOUR).unwrap();
        assert_eq!(
            map.zones().iter().map(|z| z.id).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(map.zone_at([0.0, 0.0]).unwrap().id, 3);
        assert_eq!(map.zone_at([-0.001, 0.0]).unwrap().id, 2);
        assert_eq!(map.zone_at([0.0, -0.001]).unwrap().id, 1);
        assert_eq!(map.zone_at([-2000.0, -2000.0]).unwrap().id, 0);
        assert!(map.zone_at([2000.0, 5.0]).is_none());
        assert_eq!(map.get(2).unwrap().http.port(), 3102);
        assert!(matches!(map.get(7), Err(ZoneMapError::UnknownZone(7))));
    }

    #[test]
    fn bad_maps_are_refused_with_the_offending_values() {
        let one = |id: u32, min: [f32; 2], max: [f32; 2], port: u16| {
            format!(
                "[[zone]]\nid = {id}\nmin = [{:?}, {:?}]\nmax = [{:?}, {:?}]\nhttp = \"127.0.0.1:{port}\"\nudp = \"127.0.0.1:{}\"\n",
                min[0],
                min[1],
                max[0],
                max[1],
                port + 1000
            )
        };
        let err = |text: String| ZoneMap::parse(&text).unwrap_err();
        assert!(matches!(err(String::new()), ZoneMapError::Syntax(_)));
        assert!(matches!(err("zone = []".into()), ZoneMapError::Empty));
        assert!(matches!(
            err(one(70_000, [0.0, 0.0], [1.0, 1.0], 1)),
            ZoneMapError::IdOutOfRange(70_000)
        ));
        assert!(matches!(
            err(one(1, [0.0, 0.0], [1.0, 1.0], 1) + &one(1, [5.0, 5.0], [6.0, 6.0], 2)),
            ZoneMapError::DuplicateId(1)
        ));
        assert!(matches!(
            err(one(1, [0.0, 0.0], [0.0, 1.0], 1)),
            ZoneMapError::BadRegion { id: 1, .. }
        ));
        assert!(matches!(
            err(one(1, [0.0, 0.0], [2.0, 2.0], 1) + &one(4, [1.0, 1.0], [3.0, 3.0], 2)),
            ZoneMapError::Overlap(1, 4)
        ));
        assert!(matches!(
            err(one(1, [0.0, 0.0], [1.0, 1.0], 1) + &one(2, [1.0, 0.0], [2.0, 1.0], 1)),
            ZoneMapError::SharedAddress {
                first: 1,
                second: 2,
                ..
            }
        ));
        let unknown_key = one(1, [0.0, 0.0], [1.0, 1.0], 1) + "colour = \"red\"\n";
        assert!(matches!(err(unknown_key), ZoneMapError::Syntax(_)));
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zones.toml");
        std::fs::write(&path, vec![b'#'; MAX_ZONE_MAP_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            ZoneMap::load(&path),
            Err(ZoneMapError::TooLarge { .. })
        ));
        std::fs::write(&path, FOUR).unwrap();
        assert_eq!(ZoneMap::load(&path).unwrap().zones().len(), 4);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,400}") {
            let _ = ZoneMap::parse(&text);
        }

        #[test]
        fn every_point_of_a_grid_map_has_exactly_one_owner(
            columns in 1usize..5,
            rows in 1usize..5,
            x in -100.0f32..100.0,
            y in -100.0f32..100.0,
        ) {
            let cell = 50.0 / columns as f32;
            let cell_y = 50.0 / rows as f32;
            let mut zones = Vec::new();
            for r in 0..rows {
                for c in 0..columns {
                    let id = (r * columns + c) as ZoneId;
                    let port = 2000 + 2 * id;
                    zones.push(ZoneSpec {
                        id,
                        min: [-25.0 + c as f32 * cell, -25.0 + r as f32 * cell_y],
                        max: [-25.0 + (c + 1) as f32 * cell, -25.0 + (r + 1) as f32 * cell_y],
                        http: SocketAddr::from(([127, 0, 0, 1], port)),
                        udp: SocketAddr::from(([127, 0, 0, 1], port + 1)),
                    });
                }
            }
            let map = ZoneMap::new(zones).unwrap();
            let owners = map.zones().iter().filter(|z| z.contains([x, y])).count();
            prop_assert!(owners <= 1);
            prop_assert_eq!(map.zone_at([x, y]).is_some(), owners == 1);
        }
    }
}
