//! Types that can only hold valid values. Request bodies are parsed into these once, at the edge;
//! everything below the routes takes them and never checks again.

pub mod event;
pub mod job;
mod otp;
mod patch;
mod secret;
pub mod subscription;
pub mod token;
mod validation;

pub use otp::{
    Otp, PairingRequest, PairingRequestDoc, ResyncRequest, ResyncRequestDoc, UserId,
    ValidateRequest, ValidateRequestDoc,
};
pub use patch::{TokenPatch, TokenPatchDoc};
pub use secret::Secret;
pub use token::{
    HashAlgorithm, NewToken, OtpLength, SerialNumber, TokenKind, TokenSource, TokenStatus,
    TokenType,
};
pub use validation::{shown_name, DetailCode, FieldError};
