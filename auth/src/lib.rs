//! shoal-auth: who is calling the API and what they may do, as pure functions.
//!
//! - [`sigv4`]: AWS Signature Version 4, verified the way AWS verifies it, so the AWS CLI and
//!   SDKs sign requests to shoal unchanged (a profile with a key shoal issued). The errors are
//!   AWS's: [`sigv4::AuthError::code`].
//! - [`policy`]: IAM-shaped policies (`Allow`/`Deny`, actions and resources with `*` and `?`) and
//!   the decision for one action on one resource.
//! - [`join_token`]: join tokens (made, parsed, checked against the stored hash and expiry).
//!
//! No I/O and no clock: the caller passes the time, the secrets and the request's parts.

pub mod join_token;
pub mod policy;
pub mod sigv4;
