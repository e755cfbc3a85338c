//! The validated traffic policy of a route: extra match conditions,
//! weighted backends with subsets, how a split is keyed, header rewrites.

use std::fmt;

use http::{HeaderName, HeaderValue, Method};

use super::ServiceName;

/// Largest weight of one backend of a route. The smooth split precomputes
/// one slot per unit of weight (after dividing by the weights' GCD), so
/// this and [`MAX_BACKENDS`] bound that schedule.
pub const MAX_BACKEND_WEIGHT: u32 = 1000;
/// Most backends one route may split over.
pub const MAX_BACKENDS: usize = 64;

/// A regular expression that must match the whole text (it is anchored),
/// with the source it was compiled from.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Pattern, String> {
        // The size limit keeps a hostile or careless pattern from costing
        // megabytes per compiled route.
        regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
            .map(|regex| Pattern {
                source: source.to_string(),
                regex,
            })
            .map_err(|e| {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or("").trim().to_string();
                format!("`{source}` is not a valid regular expression: {last}")
            })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// What a request header must be for a route to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    /// One of the field's values is exactly this.
    Exact(String),
    /// One of the field's values starts with this.
    Prefix(String),
    /// One of the field's values matches this whole.
    Regex(Pattern),
    /// The field is there, whatever its value.
    Present,
    /// The field is not there.
    Absent,
}

/// A header condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    /// The field (lower case).
    pub name: HeaderName,
    /// What it must be.
    pub test: HeaderTest,
}

/// What a query parameter must be for a route to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryTest {
    /// One of its values, percent-decoded, is exactly this.
    Exact(String),
    /// It is there (with or without a value).
    Present,
}

/// A query-parameter condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryCondition {
    /// The parameter name, as written (case matters).
    pub name: String,
    /// What it must be.
    pub test: QueryTest,
}

/// The conditions a route adds to host and path; all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchConditions {
    /// The request method must be one of these (any when empty).
    pub methods: Vec<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderCondition>,
    /// Query-parameter conditions.
    pub query: Vec<QueryCondition>,
}

impl MatchConditions {
    /// How many extra conditions there are (a method list counts once):
    /// the third precedence key, after host and path.
    pub fn count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }
}

impl fmt::Display for MatchConditions {
    /// `GET|POST x-env=staging x-user^=beta- x-build~=… x-debug x-old=absent ?v=2 ?debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = Vec::new();
        if !self.methods.is_empty() {
            let methods: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            words.push(methods.join("|"));
        }
        for header in &self.headers {
            let name = header.name.as_str();
            words.push(match &header.test {
                HeaderTest::Exact(value) => format!("{name}={value}"),
                HeaderTest::Prefix(prefix) => format!("{name}^={prefix}"),
                HeaderTest::Regex(pattern) => format!("{name}~={}", pattern.as_str()),
                HeaderTest::Present => name.to_string(),
                HeaderTest::Absent => format!("{name}=absent"),
            });
        }
        for query in &self.query {
            words.push(match &query.test {
                QueryTest::Exact(value) => format!("?{}={value}", query.name),
                QueryTest::Present => format!("?{}", query.name),
            });
        }
        f.write_str(&words.join(" "))
    }
}

/// Which instances of a service a backend may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    /// The instance's version must be this.
    pub version: Option<String>,
    /// The instance must carry every one of these tags.
    pub tags: Vec<String>,
}

impl fmt::Display for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(version) = &self.version {
            parts.push(format!("version {version}"));
        }
        if !self.tags.is_empty() {
            parts.push(format!("tags {}", self.tags.join(",")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// What a backend does when its subset has no instance in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubsetFallback {
    /// Any instance of the service in rotation (the default).
    #[default]
    Any,
    /// None: the request gets 503.
    None,
}

/// One target of a route's split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The service.
    pub service: ServiceName,
    /// Share of the route's traffic, 0..=[`MAX_BACKEND_WEIGHT`] (0 takes
    /// none: a parked colour of a blue/green pair).
    pub weight: u32,
    /// Only these instances of the service, if set.
    pub subset: Option<Subset>,
    /// When the subset is empty.
    pub fallback: SubsetFallback,
}

/// What keys a consistent split (`split_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitKey {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The client IP (as found through `trusted_proxies`).
    ClientIp,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRewrite {
    /// Fields removed.
    pub remove: Vec<HeaderName>,
    /// Fields replaced (every earlier value goes).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Values appended beside any already there.
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRewrite {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// A route's traffic policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Where matching requests go (one or more, weighted); the total
    /// weight is at least 1.
    pub backends: Vec<BackendConfig>,
    /// Consistent split keyed by this; the smooth split when `None` (and
    /// for requests without the key).
    pub split_by: Option<SplitKey>,
    /// Edits to the request sent upstream.
    pub request_headers: HeaderRewrite,
    /// Edits to the response sent to the client.
    pub response_headers: HeaderRewrite,
    /// Answer with `X-Switchyard-Backend: service/instance` (debugging).
    pub backend_header: bool,
}

impl RoutePolicy {
    /// A policy sending everything to `service`, with no edits.
    pub fn to_service(service: ServiceName) -> RoutePolicy {
        RoutePolicy {
            backends: vec![BackendConfig {
                service,
                weight: 1,
                subset: None,
                fallback: SubsetFallback::Any,
            }],
            split_by: None,
            request_headers: HeaderRewrite::default(),
            response_headers: HeaderRewrite::default(),
            backend_header: false,
        }
    }
}
