//! The tick phases: order, indices, names.

use orrery_tick::Phase;

#[test]
fn all_lists_every_phase_in_execution_order() {
    assert_eq!(Phase::COUNT, 8);
    assert_eq!(
        Phase::ALL,
        [
            Phase::Input,
            Phase::Reducers,
            Phase::Scheduled,
            Phase::Systems,
            Phase::Capture,
            Phase::Commit,
            Phase::Publish,
            Phase::Flush,
        ]
    );
    for (position, phase) in Phase::ALL.into_iter().enumerate() {
        assert_eq!(phase.index(), position);
    }
    assert!(Phase::ALL.is_sorted(), "Ord must match execution order");
}

#[test]
fn names_are_lowercase_and_used_by_display() {
    let names = Phase::ALL.map(Phase::name);
    assert_eq!(
        names,
        [
            "input",
            "reducers",
            "scheduled",
            "systems",
            "capture",
            "commit",
            "publish",
            "flush"
        ]
    );
    for phase in Phase::ALL {
        assert_eq!(phase.to_string(), phase.name());
    }
}
