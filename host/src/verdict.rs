//! What a rule says about one event: skip it, or keep it in a partition
//! with an effect on the partition's membership. The runtime produces
//! these from the guest's answers; the trigger core consumes them. Both
//! see this type, neither the other's.

/// What a kept event does to its partition's membership (dwell rules; the
/// other kinds treat every kept event alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// Start a membership (no-op for a member).
    Enter,
    /// End it.
    Leave,
    /// Re-anchor it (start one for a non-member).
    Refresh,
    /// Change nothing.
    Ignore,
}

impl Membership {
    /// The name as the WIT and the reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Membership::Enter => "enter",
            Membership::Leave => "leave",
            Membership::Refresh => "refresh",
            Membership::Ignore => "ignore",
        }
    }
}

/// Where a kept event goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    /// The partition key; `None` is the rule's global partition.
    pub partition: Option<String>,
    /// What the event does to the partition's membership (dwell rules).
    pub membership: Membership,
}

/// A rule's decision on one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Verdict {
    /// The event does not concern the rule.
    Skip,
    /// The event concerns the rule and goes here.
    Keep(Placement),
}
