//! A grid with `DenseHandles` behaves exactly like one with the default hashed index.

use glam::Vec2;
use orrery_spatial::{DenseHandles, SpatialGrid};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(u32, f32, f32),
    Update(u32, f32, f32),
    Remove(u32),
    Query(f32, f32, f32),
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0u32..64;
    let c = -200f32..200.0;
    prop_oneof![
        (h.clone(), c.clone(), c.clone()).prop_map(|(h, x, y)| Op::Insert(h, x, y)),
        (h.clone(), c.clone(), c.clone()).prop_map(|(h, x, y)| Op::Update(h, x, y)),
        h.prop_map(Op::Remove),
        (c.clone(), c, 0f32..80.0).prop_map(|(x, y, r)| Op::Query(x, y, r)),
    ]
}

proptest! {
    #[test]
    fn dense_and_hashed_indexes_agree(ops in proptest::collection::vec(op(), 1..300)) {
        let mut hashed = SpatialGrid::<Vec2, u32>::new(16.0).unwrap();
        let mut dense = SpatialGrid::<Vec2, u32, DenseHandles>::new(16.0).unwrap();
        for op in ops {
            match op {
                Op::Insert(h, x, y) => {
                    prop_assert_eq!(hashed.insert(h, Vec2::new(x, y)), dense.insert(h, Vec2::new(x, y)));
                }
                Op::Update(h, x, y) => {
                    prop_assert_eq!(hashed.update(h, Vec2::new(x, y)), dense.update(h, Vec2::new(x, y)));
                }
                Op::Remove(h) => prop_assert_eq!(hashed.remove(h), dense.remove(h)),
                Op::Query(x, y, r) => {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    hashed.query_radius(Vec2::new(x, y), r, &mut a);
                    dense.query_radius(Vec2::new(x, y), r, &mut b);
                    prop_assert_eq!(a, b);
                }
            }
            prop_assert_eq!(hashed.len(), dense.len());
        }
    }
}
