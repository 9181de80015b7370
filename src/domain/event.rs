//! What an event is about: its type, and who caused the change (the origin).

/// Who and what caused a change: the caller's JWT `sub` (or `system`) and the id of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub actor: String,
    pub request_id: Option<String>,
}

/// The actor of changes no caller asked for.
pub const SYSTEM: &str = "system";

impl Origin {
    pub fn system() -> Self {
        Self {
            actor: SYSTEM.to_string(),
            request_id: None,
        }
    }
}

/// The types of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    TokenCreated,
    TokenDeleted,
    TokenPaired,
    TokenUnpaired,
    TokenLocked,
    TokenUnlocked,
    TokenResynced,
    TokenDisabled,
    TokenEnabled,
    JobCreated,
    JobCompleted,
    JobFailed,
    JobCanceled,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        Self::TokenCreated,
        Self::TokenDeleted,
        Self::TokenPaired,
        Self::TokenUnpaired,
        Self::TokenLocked,
        Self::TokenUnlocked,
        Self::TokenResynced,
        Self::TokenDisabled,
        Self::TokenEnabled,
        Self::JobCreated,
        Self::JobCompleted,
        Self::JobFailed,
        Self::JobCanceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenCreated => "OATH_TOKEN.CREATED",
            Self::TokenDeleted => "OATH_TOKEN.DELETED",
            Self::TokenPaired => "OATH_TOKEN.PAIRED",
            Self::TokenUnpaired => "OATH_TOKEN.UNPAIRED",
            Self::TokenLocked => "OATH_TOKEN.LOCKED",
            Self::TokenUnlocked => "OATH_TOKEN.UNLOCKED",
            Self::TokenResynced => "OATH_TOKEN.RESYNCED",
            Self::TokenDisabled => "OATH_TOKEN.DISABLED",
            Self::TokenEnabled => "OATH_TOKEN.ENABLED",
            Self::JobCreated => "OATH_JOB.CREATED",
            Self::JobCompleted => "OATH_JOB.COMPLETED",
            Self::JobFailed => "OATH_JOB.FAILED",
            Self::JobCanceled => "OATH_JOB.CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// `OATH_TOKEN` or `OATH_JOB`.
    pub fn resource_type(self) -> &'static str {
        match self {
            Self::JobCreated | Self::JobCompleted | Self::JobFailed | Self::JobCanceled => {
                "OATH_JOB"
            }
            _ => "OATH_TOKEN",
        }
    }
}
