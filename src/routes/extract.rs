//! The extractor every `/v1` handler starts with: [`Authorized`] authenticates the bearer token,
//! checks the operation's scope and the path's environment, counts the request against the
//! environment's rate limit, then reads the path's ids, in that order, so that nothing is looked
//! up (nor a malformed id reported) for a caller who may not look.

use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use uuid::Uuid;

use super::AppState;
use crate::auth::Scope;
use crate::error::ApiError;

/// The scopes an operation accepts, any one of them, as a type: `Authorized<TokensRead>`.
pub trait Demands {
    const SCOPES: &'static [Scope];
}

macro_rules! scopes {
    ($($name:ident),*) => {$(
        #[doc = concat!("The `", stringify!($name), "` scope.")]
        pub struct $name;
        impl Demands for $name {
            const SCOPES: &'static [Scope] = &[Scope::$name];
        }
    )*};
}
scopes!(
    TokensRead,
    TokensWrite,
    JobsRead,
    JobsWrite,
    OtpValidate,
    ActivitiesRead,
    SubscriptionsRead,
    SubscriptionsWrite
);

/// Any of the read scopes.
pub struct AnyRead;

impl Demands for AnyRead {
    const SCOPES: &'static [Scope] = &[
        Scope::TokensRead,
        Scope::JobsRead,
        Scope::ActivitiesRead,
        Scope::SubscriptionsRead,
    ];
}

/// The ids a path names beside its environment.
pub trait PathIds: Sized {
    fn from_path(req: &HttpRequest) -> Result<Self, ApiError>;
}

/// A path with no id beside the environment.
impl PathIds for () {
    fn from_path(_: &HttpRequest) -> Result<Self, ApiError> {
        Ok(())
    }
}

/// `{token_id}`.
pub struct TokenId(pub Uuid);

impl PathIds for TokenId {
    fn from_path(req: &HttpRequest) -> Result<Self, ApiError> {
        path_id(req, "token_id").map(Self)
    }
}

/// `{job_id}`.
pub struct JobId(pub Uuid);

impl PathIds for JobId {
    fn from_path(req: &HttpRequest) -> Result<Self, ApiError> {
        path_id(req, "job_id").map(Self)
    }
}

/// A UUID path segment; anything else names no resource, so it is a 404.
fn path_id(req: &HttpRequest, name: &str) -> Result<Uuid, ApiError> {
    req.match_info()
        .get(name)
        .and_then(|s| Uuid::try_parse(s).ok())
        .ok_or_else(ApiError::not_found)
}

/// A caller allowed `S` in the path's environment `env`, and the path's ids `P`.
pub struct Authorized<S, P = ()> {
    pub env: Uuid,
    pub ids: P,
    scope: PhantomData<S>,
}

impl<S: Demands, P: PathIds> FromRequest for Authorized<S, P> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal("application state missing".into()))?;
            let header = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or("\u{0}"));
            let principal = state.auth.authenticate(header).await?;
            crate::audit::actor(&req, principal.subject.as_deref(), principal.env);
            let env = match path_id(&req, "env_id") {
                Ok(env) => env,
                // Not a UUID: no such environment, but a caller without the scope gets 403.
                Err(not_found) => {
                    principal.require_any(principal.env, S::SCOPES)?;
                    return Err(not_found);
                }
            };
            principal.require_any(env, S::SCOPES)?;
            state.limits.check_environment(env)?;
            Ok(Self {
                env,
                ids: P::from_path(&req)?,
                scope: PhantomData,
            })
        })
    }
}
