//! # orrery-spatial
//!
//! The spatial hash grid used by Orrery's spatial indexes and interest management. It depends
//! on glam only and must not depend on ECS, networking or async crates. (The grid itself lands
//! with the spatial-index issue.)
