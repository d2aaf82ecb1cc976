//! The two requests object_store cannot make for us: a listing that
//! gives keys exactly as the store has them, and the delete of a key an
//! object_store path cannot name.
//!
//! object_store parses every key of a listing page into its `Path`, and
//! one key it refuses (a TAB or a newline, an empty, `.` or `..`
//! component: S3 allows them all) fails the whole page, so one key
//! written by another tool would fail every listing above it; and its
//! `Path` drops a trailing `/`, so the zero-byte `DIR/` folder markers
//! other tools write (the S3 console's "Create folder") list as files and
//! cannot be deleted. So listings are `ListObjectsV2` requests made here,
//! with `encoding-type=url` (the keys come percent-encoded, whatever they
//! hold), signed by object_store's own `AwsAuthorizer` with the store's
//! credentials and sent through the store's HTTP client; what each key
//! means is decided by the caller (`Bucket::pages`).

use std::time::{Duration, Instant};

use bytes::Buf;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
use object_store::RetryConfig;
use serde::Deserialize;

/// The most keys one listing request asks for (S3's own page size).
pub(super) const PAGE_KEYS: usize = 1000;

/// The bytes of an error answer kept for its message.
const ERROR_BODY_MAX: usize = 1024;

/// How to reach and sign for one bucket, without object_store's paths.
#[derive(Debug, Clone)]
pub(super) struct Raw {
    http: HttpClient,
    /// The bucket's URL (`https://s3.REGION.amazonaws.com/BUCKET`, or
    /// `ENDPOINT/BUCKET`), as object_store builds it.
    url: String,
    region: String,
    credentials: AwsCredentialProvider,
    sign: Signing,
    retry: RetryConfig,
}

/// How requests are signed, as the store's configuration says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Signing {
    /// `AWS_SKIP_SIGNATURE`: anonymous requests.
    pub skip: bool,
    /// `AWS_UNSIGNED_PAYLOAD`.
    pub unsigned_payload: bool,
    /// `AWS_REQUEST_PAYER`.
    pub request_payer: bool,
}

/// One key of a listing, decoded.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub e_tag: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub(super) struct Page {
    /// The keys, in the store's (byte) order.
    pub keys: Vec<Listed>,
    /// The common prefixes of a delimited listing, each ending in `/`.
    pub prefixes: Vec<String>,
    /// The token of the next page, if there is one.
    pub next: Option<String>,
}

/// Where a listing page starts.
#[derive(Debug, Clone, Default)]
pub(super) enum From {
    #[default]
    Start,
    /// After this key (`start-after`: what a walk that deletes as it goes
    /// uses, since it depends on nothing but the keys).
    After(String),
    /// The continuation token of the page before.
    Token(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_continuation_token: Option<String>,
    #[serde(default)]
    encoding_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
    last_modified: String,
    #[serde(rename = "ETag", default)]
    e_tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

/// A failed request's words, as the source of an `object_store::Error`.
#[derive(Debug)]
struct Failed(String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

fn generic(why: String) -> object_store::Error {
    object_store::Error::Generic { store: "S3", source: Box::new(Failed(why)) }
}

impl Raw {
    pub(super) fn new(
        http: HttpClient,
        url: String,
        region: String,
        credentials: AwsCredentialProvider,
        sign: Signing,
    ) -> Raw {
        Raw {
            http,
            url: url.trim_end_matches('/').to_owned(),
            region,
            credentials,
            sign,
            retry: RetryConfig::default(),
        }
    }

    /// The same, signed with these credentials.
    pub(super) fn with_credentials(mut self, credentials: AwsCredentialProvider) -> Raw {
        self.credentials = credentials;
        self
    }

    /// The same, with these retries.
    pub(super) fn with_retry(mut self, retry: RetryConfig) -> Raw {
        self.retry = retry;
        self
    }

    /// One page of the keys starting with `prefix` (all of them, or with
    /// `delimited` those of one level and the common prefixes below it),
    /// from `from`, at most `max` (else [`PAGE_KEYS`]).
    ///
    /// # Errors
    ///
    /// The store's answer as object_store would give it (`NotFound`,
    /// `PermissionDenied`, `Unauthenticated`, else `Generic` with the S3
    /// error's text), after the retries.
    pub(super) async fn list(
        &self,
        prefix: &str,
        delimited: bool,
        from: &From,
        max: Option<usize>,
    ) -> object_store::Result<Page> {
        let mut url = reqwest::Url::parse(&self.url).map_err(|e| generic(format!("{}: {e}", self.url)))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("list-type", "2");
            query.append_pair("encoding-type", "url");
            query.append_pair("max-keys", &max.unwrap_or(PAGE_KEYS).min(PAGE_KEYS).to_string());
            if !prefix.is_empty() {
                query.append_pair("prefix", prefix);
            }
            if delimited {
                query.append_pair("delimiter", "/");
            }
            match from {
                From::Start => {}
                From::After(key) => {
                    query.append_pair("start-after", key);
                }
                From::Token(token) => {
                    query.append_pair("continuation-token", token);
                }
            }
        }
        let body = self.send("GET", url.as_str(), prefix).await?;
        let answer: ListBucketResult = quick_xml::de::from_reader(body.reader())
            .map_err(|e| generic(format!("a listing the S3 client cannot read: {e}")))?;
        // A store that ignores `encoding-type` says nothing of it, and its
        // keys are as they are.
        let encoded = answer.encoding_type.as_deref() == Some("url");
        let decode = |s: String| -> object_store::Result<String> {
            if !encoded {
                return Ok(s);
            }
            String::from_utf8(percent_decode(&s, true))
                .map_err(|_| generic(format!("a listed key that is not UTF-8: {s:?}")))
        };
        let mut page = Page::default();
        for c in answer.contents {
            let last_modified = chrono::DateTime::parse_from_rfc3339(&c.last_modified)
                .map_err(|e| generic(format!("a listed time {:?}: {e}", c.last_modified)))?
                .with_timezone(&chrono::Utc);
            page.keys.push(Listed { key: decode(c.key)?, size: c.size, last_modified, e_tag: c.e_tag });
        }
        for p in answer.common_prefixes {
            page.prefixes.push(decode(p.prefix)?);
        }
        if answer.is_truncated {
            page.next = answer.next_continuation_token;
        }
        Ok(page)
    }

    /// Deletes the object `key` exactly as named (`DIR/` included); one
    /// already gone is fine.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub(super) async fn delete(&self, key: &str) -> object_store::Result<()> {
        let url = format!("{}/{}", self.url, path_encode(key));
        match self.send("DELETE", &url, key).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends a signed request with an empty body, retried as the store's
    /// own requests are (connection failures, 5xx, 429: `SlowDown`), and
    /// returns the answer's body.
    async fn send(&self, method: &'static str, url: &str, what: &str) -> object_store::Result<bytes::Bytes> {
        let started = Instant::now();
        let mut wait = self.retry.backoff.init_backoff;
        let mut tries = 0;
        loop {
            let credential = match self.sign.skip {
                true => None,
                false => Some(self.credentials.get_credential().await?),
            };
            let mut request = HttpRequest::new(HttpRequestBody::empty());
            *request.method_mut() = http::Method::from_bytes(method.as_bytes()).expect("a method");
            *request.uri_mut() = url.parse().map_err(|e| generic(format!("{url}: {e}")))?;
            if let Some(credential) = &credential {
                AwsAuthorizer::new(credential, "s3", &self.region)
                    .with_sign_payload(!self.sign.unsigned_payload)
                    .with_request_payer(self.sign.request_payer)
                    .try_authorize(&mut request, None)?;
            }
            let retried = tries < self.retry.max_retries && started.elapsed() < self.retry.retry_timeout;
            let answer = match self.http.execute(request).await {
                Ok(answer) => answer,
                Err(e) if retried => {
                    tracing::debug!("{method} {}: {e}; retrying", crate::text::printable(what));
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    wait = next_backoff(wait, &self.retry);
                    continue;
                }
                Err(e) => return Err(generic(format!("{method} failed: {e}"))),
            };
            let status = answer.status();
            let body = answer.into_body().bytes().await;
            if status.is_success() {
                if let Ok(body) = body {
                    return Ok(body);
                }
            }
            if (status.is_server_error() || status.as_u16() == 429 || body.is_err()) && retried {
                tries += 1;
                tokio::time::sleep(wait).await;
                wait = next_backoff(wait, &self.retry);
                continue;
            }
            let text = match body {
                Ok(b) => String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_MAX)]).into_owned(),
                Err(e) => e.to_string(),
            };
            let source = Box::new(Failed(format!("{status}: {text}")));
            let path = what.to_owned();
            return Err(match status.as_u16() {
                404 => object_store::Error::NotFound { path, source },
                403 => object_store::Error::PermissionDenied { path, source },
                401 => object_store::Error::Unauthenticated { path, source },
                _ => object_store::Error::Generic { store: "S3", source },
            });
        }
    }
}

fn next_backoff(wait: Duration, retry: &RetryConfig) -> Duration {
    wait.mul_f64(retry.backoff.base.max(1.0)).min(retry.backoff.max_backoff)
}

/// `%XX` escapes undone (and `+` as a space, when `plus` says so: S3's
/// `encoding-type=url` writes a space as `+`, as forms do).
pub(super) fn percent_decode(s: &str, plus: bool) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus && bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    out
}

/// A key as a URL path: every byte but the unreserved ones and `/`
/// escaped (what SigV4 signs for S3, and object_store sends).
fn path_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3 / 2);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_and_encode() {
        assert_eq!(percent_decode("a%09b+c%2B", true), b"a\tb c+");
        assert_eq!(percent_decode("a+b", false), b"a+b");
        assert_eq!(percent_decode("cut%2", true), b"cut%2");
        // Upload ids in a completion's query (`+`, `=`, `/` escaped).
        assert_eq!(percent_decode("abc%2Bd%3D%3D", false), b"abc+d==");
        assert_eq!(percent_decode("%e2%82%ac", true), "€".as_bytes());
        assert_eq!(path_encode("d/a\tb [1].txt"), "d/a%09b%20%5B1%5D.txt");
        assert_eq!(path_encode("dir/"), "dir/");
    }
}
