//! CDI's route table and the first request rule (contract §5.4): which path
//! is which upload, and what a method other than POST gets. Authentication,
//! busy/done and the body come after, in `server`.

use hyper::Method;

/// How an upload route's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// The body is the image (or a clone stream, by header).
    Raw,
    /// The body is a tar archive unpacked into the Filesystem volume.
    Archive,
    /// `multipart/form-data`; the part named `file` is the image.
    Form,
}

/// One of CDI's upload routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRoute {
    /// How the body is read.
    pub body: BodyKind,
    /// An `-async` route (answers `HEAD` before any authentication).
    pub is_async: bool,
}

/// What a request's method and path ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// `/healthz`, any method: 200 `OK`.
    Health,
    /// Progress pages of the status endpoint (`/metrics`, `/status`), GET.
    StatusPage,
    /// `HEAD` on an async route: 200, empty, no authentication.
    AsyncProbe,
    /// A POST to an upload route.
    Upload(UploadRoute),
    /// An upload route with another method: 404, empty body.
    WrongMethod,
    /// Any other path: 404 `404 page not found`.
    NotFound,
}

/// The route of `method` `path`.
pub fn route(method: &Method, path: &str) -> Routed {
    if path == "/healthz" {
        return Routed::Health;
    }
    if (path == "/metrics" || path == "/status") && method == Method::GET {
        return Routed::StatusPage;
    }
    let Some(name) = path
        .strip_prefix("/v1beta1/")
        .or_else(|| path.strip_prefix("/v1alpha1/"))
    else {
        return Routed::NotFound;
    };
    let (body, is_async) = match name {
        "upload" => (BodyKind::Raw, false),
        "upload-async" => (BodyKind::Raw, true),
        "upload-archive" => (BodyKind::Archive, false),
        "upload-form" => (BodyKind::Form, false),
        "upload-form-async" => (BodyKind::Form, true),
        _ => return Routed::NotFound,
    };
    match *method {
        Method::POST => Routed::Upload(UploadRoute { body, is_async }),
        Method::HEAD if is_async => Routed::AsyncProbe,
        _ => Routed::WrongMethod,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_cdis_table() {
        let post = Method::POST;
        assert_eq!(route(&Method::DELETE, "/healthz"), Routed::Health);
        assert_eq!(
            route(&post, "/v1alpha1/upload"),
            Routed::Upload(UploadRoute {
                body: BodyKind::Raw,
                is_async: false
            })
        );
        assert_eq!(
            route(&post, "/v1beta1/upload-form-async"),
            Routed::Upload(UploadRoute {
                body: BodyKind::Form,
                is_async: true
            })
        );
        assert_eq!(
            route(&Method::HEAD, "/v1beta1/upload-async"),
            Routed::AsyncProbe
        );
        assert_eq!(
            route(&Method::HEAD, "/v1alpha1/upload-form-async"),
            Routed::AsyncProbe
        );
        // Sync routes: HEAD is a wrong method, not a probe.
        assert_eq!(route(&Method::HEAD, "/v1beta1/upload"), Routed::WrongMethod);
        assert_eq!(
            route(&Method::GET, "/v1beta1/upload-async"),
            Routed::WrongMethod
        );
        assert_eq!(route(&post, "/v1beta1/uploads"), Routed::NotFound);
        assert_eq!(route(&post, "/v2/upload"), Routed::NotFound);
        assert_eq!(route(&Method::GET, "/metrics"), Routed::StatusPage);
    }
}
