//! The registry's HTTP API (distribution spec v2) on the shared network layer:
//! the `/v2/` ping and its challenge, the Basic or Bearer-token flow, manifest
//! and small-blob reads with a size limit, and layer blobs as an [`Opener`]
//! the layer resumes with ranged GETs. Every request is retried under the
//! layer's policy; an expired token is renewed once per request.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;
use url::Url;

use crate::source::http::basic_auth;
use crate::source::net::request::{self, Opened, Target};
use crate::source::net::resume::Identity;
use crate::source::net::retry::with_retries;
use crate::source::net::transfer::{OpenFuture, Opener};
use crate::source::net::{DisplayUrl, Net, NetError};

/// Largest manifest or index accepted.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest token response accepted.
pub const MAX_TOKEN: u64 = 1 << 20;

/// One repository of one registry.
pub struct RegistryApi {
    net: Arc<Net>,
    /// `scheme://host[:port]/`.
    base: Url,
    repository: String,
    credentials: Option<(String, String)>,
    /// The `Authorization` value in use, if any.
    authorization: Mutex<Option<HeaderValue>>,
}

/// What `/v2/` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl RegistryApi {
    /// Reaches `registry` (host[:port]) over https, or with `insecure` over
    /// plain http when https does not connect, and authorizes for pulls.
    pub async fn connect(
        net: Arc<Net>,
        registry: &str,
        repository: &str,
        credentials: Option<(String, String)>,
        insecure: bool,
    ) -> Result<RegistryApi, NetError> {
        let base_for = |scheme: &str| {
            Url::parse(&format!("{scheme}://{registry}/")).map_err(|e| NetError::Protocol {
                url: DisplayUrl::of_spec(registry),
                detail: format!("not a registry host: {e}"),
            })
        };
        let mut api = RegistryApi {
            net,
            base: base_for("https")?,
            repository: repository.to_string(),
            credentials,
            authorization: Mutex::new(None),
        };
        match api.authorize().await {
            Err(NetError::Transport { .. } | NetError::Tls { .. } | NetError::GaveUp { .. })
                if insecure =>
            {
                tracing::debug!("https failed; insecure: trying plain http");
                api.base = base_for("http")?;
                api.authorize().await?;
            }
            other => other?,
        }
        Ok(api)
    }

    fn url(&self, path: &str) -> Result<Url, NetError> {
        self.base.join(path).map_err(|e| NetError::Protocol {
            url: DisplayUrl::new(&self.base),
            detail: format!("bad path {path:?}: {e}"),
        })
    }

    /// Pings `/v2/` and gets what its challenge asks for.
    async fn authorize(&self) -> Result<(), NetError> {
        let ping = Target {
            url: self.url("v2/")?,
            origin_headers: HeaderMap::new(),
        };
        let shown = ping.shown();
        let challenge = with_retries(&self.net, || async {
            let response = request::get(&self.net, &ping, &HeaderMap::new()).await?;
            match response.status().as_u16() {
                401 => Ok(parse_challenge(
                    response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default(),
                )),
                200..=299 => Ok(Challenge::None),
                _ => Err(request::status_error(&self.net, &shown, response).await),
            }
        })
        .await?;
        let value = match challenge {
            Challenge::None | Challenge::Basic => self
                .credentials
                .as_ref()
                .map(|(user, pass)| basic_auth(user, Some(pass))),
            Challenge::Bearer { realm, service } => {
                Some(self.token(&realm, service.as_deref()).await?)
            }
        };
        *self.authorization.lock().await = value;
        Ok(())
    }

    /// A bearer token for pulling the repository from `realm`.
    async fn token(&self, realm: &str, service: Option<&str>) -> Result<HeaderValue, NetError> {
        let mut url = Url::parse(realm).map_err(|e| NetError::Protocol {
            url: DisplayUrl::of_spec(realm),
            detail: format!("the token realm is not a URL: {e}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{}:pull", self.repository));
        }
        let mut origin_headers = HeaderMap::new();
        if let Some((user, pass)) = &self.credentials {
            origin_headers.insert(AUTHORIZATION, basic_auth(user, Some(pass)));
        }
        let target = Target {
            url,
            origin_headers,
        };
        let shown = target.shown();
        let body = with_retries(&self.net, || async {
            let response = request::get(&self.net, &target, &HeaderMap::new()).await?;
            if response.status().as_u16() != 200 {
                return Err(request::status_error(&self.net, &shown, response).await);
            }
            request::read_bounded(&self.net, &shown, response, "token response", MAX_TOKEN).await
        })
        .await?;
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| NetError::Protocol {
            url: shown.clone(),
            detail: format!("the token response is not valid JSON: {e}"),
        })?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| NetError::Protocol {
                url: shown.clone(),
                detail: "the token response holds no token".into(),
            })?;
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| NetError::Protocol {
                url: shown,
                detail: "the token is not a valid header value".into(),
            })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// One GET of `path` with the current authorization; a 401 renews it once.
    async fn get(
        &self,
        path: &str,
        extra: &HeaderMap,
    ) -> Result<(DisplayUrl, reqwest::Response), NetError> {
        let url = self.url(path)?;
        for renewed in [false, true] {
            let mut origin_headers = HeaderMap::new();
            if let Some(value) = self.authorization.lock().await.clone() {
                origin_headers.insert(AUTHORIZATION, value);
            }
            let target = Target {
                url: url.clone(),
                origin_headers,
            };
            let response = request::get(&self.net, &target, extra).await?;
            if response.status().as_u16() == 401 && !renewed {
                tracing::debug!(url = %target.shown(), "401: renewing the authorization");
                self.authorize().await?;
                continue;
            }
            return Ok((target.shown(), response));
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The manifest (or index) `reference` (a tag or a digest), with its
    /// media type. A manifest asked for by digest must hash to it.
    pub async fn manifest(
        &self,
        reference: &str,
        accept: &str,
    ) -> Result<(Bytes, Option<String>), NetError> {
        let path = format!("v2/{}/manifests/{reference}", self.repository);
        let mut extra = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(accept) {
            extra.insert(ACCEPT, value);
        }
        let (body, media_type, shown) = with_retries(&self.net, || async {
            let (shown, response) = self.get(&path, &extra).await?;
            if response.status().as_u16() != 200 {
                return Err(request::status_error(&self.net, &shown, response).await);
            }
            let media_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
            let body = request::read_bounded(&self.net, &shown, response, "manifest", MAX_MANIFEST)
                .await?;
            Ok((body, media_type, shown))
        })
        .await?;
        if let Some(hex) = reference.strip_prefix("sha256:") {
            let actual = hex::encode(Sha256::digest(&body));
            if actual != hex {
                return Err(NetError::Protocol {
                    url: shown,
                    detail: format!("the manifest hashes to sha256:{actual}, not {reference}"),
                });
            }
        }
        Ok((body, media_type))
    }

    /// A small blob (the image config), at most `limit` bytes.
    pub async fn small_blob(&self, digest: &str, limit: u64) -> Result<Bytes, NetError> {
        let path = format!("v2/{}/blobs/{digest}", self.repository);
        with_retries(&self.net, || async {
            let (shown, response) = self.get(&path, &HeaderMap::new()).await?;
            if response.status().as_u16() != 200 {
                return Err(request::status_error(&self.net, &shown, response).await);
            }
            request::read_bounded(&self.net, &shown, response, "config blob", limit).await
        })
        .await
    }
}

/// A layer blob, fetched (and resumed) through the registry's authorization.
pub struct BlobOpener {
    /// The API.
    pub api: Arc<RegistryApi>,
    /// The blob's digest.
    pub digest: String,
}

impl Opener for BlobOpener {
    fn open<'a>(&'a self, identity: &'a Identity, from: u64, to: Option<u64>) -> OpenFuture<'a> {
        Box::pin(async move {
            let path = format!("v2/{}/blobs/{}", self.api.repository, self.digest);
            let (shown, response) = self
                .api
                .get(&path, &identity.range_headers(from, to))
                .await?;
            let opened: Opened = request::open_response(&self.api.net, &shown, response).await?;
            Ok(opened)
        })
    }

    fn shown(&self) -> DisplayUrl {
        let path = format!("v2/{}/blobs/{}", self.api.repository, self.digest);
        self.api
            .url(&path)
            .map(|u| DisplayUrl::new(&u))
            .unwrap_or_else(|_| DisplayUrl::new(&self.api.base))
    }
}

/// Parses `WWW-Authenticate` (one challenge: `Basic ...` or `Bearer k="v",...`).
fn parse_challenge(value: &str) -> Challenge {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        match key.as_str() {
            "realm" => realm = Some(val.to_string()),
            "service" => service = Some(val.to_string()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, service },
        None => Challenge::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge("Basic realm=\"importer-test\""),
            Challenge::Basic
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://127.0.0.1:9/token\",service=\"registry.test\",scope=\"repository:a/b:pull\""
            ),
            Challenge::Bearer {
                realm: "https://127.0.0.1:9/token".into(),
                service: Some("registry.test".into())
            }
        );
        assert_eq!(
            parse_challenge("Bearer realm=https://r/t, service=s"),
            Challenge::Bearer {
                realm: "https://r/t".into(),
                service: Some("s".into())
            }
        );
        assert_eq!(parse_challenge(""), Challenge::None);
    }
}
