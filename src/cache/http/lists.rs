//! The registry API's lists: the catalog, a repository's tags, and a page of referrers, each
//! paginated with `n`, `last` and a `Link` to the next page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::response::{insert, json};
use crate::cache::App;
use crate::cache::referrers::{self, Listing};
use crate::cache::routing::Route;
use crate::reference::Digest;
use crate::registry::{RegistryError, internal};

/// The query parameters the registry API uses.
#[derive(Debug, Default)]
pub(super) struct Query {
    pub(super) ns: Option<String>,
    n: Option<usize>,
    last: Option<String>,
    /// The referrers API's filter.
    artifact_type: Option<String>,
}

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Self {
        let mut parsed = Query::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "ns" => parsed.ns = Some(value.into_owned()),
                "n" => parsed.n = value.parse().ok(),
                "last" => parsed.last = Some(value.into_owned()),
                "artifactType" => parsed.artifact_type = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }
}

/// Sorted names after `last`, at most `n`, and the `Link` to the next page. `n=0` is an empty
/// page without a `Link`, as distribution answers it: a `Link` would name the same page again,
/// and a client following it would never stop.
fn paginate(mut names: Vec<String>, query: &Query, path: &str) -> (Vec<String>, Option<String>) {
    names.sort();
    names.dedup();
    if let Some(last) = &query.last {
        names.retain(|name| name > last);
    }
    match query.n {
        Some(0) => (Vec::new(), None),
        Some(n) if names.len() > n => {
            names.truncate(n);
            let last = names.last().cloned().unwrap_or_default();
            let link = format!(
                "<{path}?n={n}&last={}>; rel=\"next\"",
                url::form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
            );
            (names, Some(link))
        }
        _ => (names, None),
    }
}

/// A page of referrers as an image index, with `OCI-Filters-Applied` when filtered and `Link`
/// when more pages follow.
pub(super) fn referrers(
    name: &str,
    subject: &Digest,
    listing: Listing,
    query: &Query,
) -> Result<Response, RegistryError> {
    let filter = query.artifact_type.as_deref();
    let (page, more) = referrers::page(
        listing.descriptors,
        filter,
        query.last.as_deref(),
        query.n,
        referrers::PAGE_BYTES,
    );
    let mut response = json(StatusCode::OK, referrers::index(page), false);
    let headers = response.headers_mut();
    insert(
        headers,
        header::CONTENT_TYPE.as_str(),
        crate::registry::OCI_INDEX,
    );
    if filter.is_some() {
        insert(headers, "oci-filters-applied", "artifactType");
    }
    if let Some(last) = more {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        next.append_pair("last", &last);
        if let Some(n) = query.n {
            next.append_pair("n", &n.to_string());
        }
        if let Some(filter) = filter {
            next.append_pair("artifactType", filter);
        }
        if let Some(ns) = &query.ns {
            next.append_pair("ns", ns);
        }
        let link = format!(
            "</v2/{name}/referrers/{subject}?{}>; rel=\"next\"",
            next.finish()
        );
        headers.insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(internal)?,
        );
    }
    // 110: served stale because the upstream failed; 299: the list is cut at the limits.
    for (code, warning) in [(110, listing.warning), (299, listing.cut)] {
        if let Some(warning) = warning {
            let value = format!("{code} regmirror \"{}\"", warning.replace('"', "'"));
            headers.append(
                header::WARNING,
                HeaderValue::from_str(&value).map_err(internal)?,
            );
        }
    }
    Ok(response)
}

pub(super) async fn catalog(app: &App, query: &Query) -> Result<Response, RegistryError> {
    let repositories = app.meta.repositories().await?;
    let router = app.upstreams.router();
    let names = repositories
        .iter()
        .filter(|(upstream, repository)| router.may_list(upstream, repository))
        .map(|(upstream, repository)| router.catalog_name(upstream, repository))
        .collect();
    let (names, link) = paginate(names, query, "/v2/_catalog");
    let body = serde_json::json!({ "repositories": names }).to_string();
    let mut response = json(StatusCode::OK, body, false);
    if let Some(link) = link {
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(internal)?,
        );
    }
    Ok(response)
}

pub(super) async fn tags(
    app: &App,
    route: &Route,
    name: &str,
    query: &Query,
) -> Result<Response, RegistryError> {
    let (names, reachable) = app.manifests.tag_list(route).await?;
    let (tags, link) = paginate(names, query, &format!("/v2/{name}/tags/list"));
    let body = serde_json::json!({ "name": name, "tags": tags }).to_string();
    let mut response = json(StatusCode::OK, body, false);
    if let Some(link) = link {
        response.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&link).map_err(internal)?,
        );
    }
    if !reachable {
        response.headers_mut().insert(
            header::WARNING,
            HeaderValue::from_static(
                "110 regmirror \"upstream unreachable: tags from cache only\"",
            ),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(n: Option<usize>, last: Option<&str>) -> Query {
        Query {
            n,
            last: last.map(str::to_owned),
            ..Query::default()
        }
    }

    #[test]
    fn pagination() {
        let names: Vec<String> = ["c", "a", "b", "d", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (page, link) = paginate(names.clone(), &query(Some(2), None), "/v2/_catalog");
        assert_eq!(page, ["a", "b"]);
        assert_eq!(
            link.as_deref(),
            Some("</v2/_catalog?n=2&last=b>; rel=\"next\"")
        );
        let (page, link) = paginate(names.clone(), &query(Some(2), Some("b")), "/v2/_catalog");
        assert_eq!(page, ["c", "d"]);
        assert_eq!(link, None);
        let (page, _) = paginate(names.clone(), &query(None, None), "/v2/_catalog");
        assert_eq!(page, ["a", "b", "c", "d"]);
        let (page, link) = paginate(names, &query(Some(0), None), "/v2/_catalog");
        assert!(page.is_empty());
        assert_eq!(link, None, "a Link would name the same page");
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "ns=ghcr.io&n=10&last=a%2Fb&x=1&artifactType=application%2Fvnd.dev.sig",
        ));
        assert_eq!(q.artifact_type.as_deref(), Some("application/vnd.dev.sig"));
        assert_eq!(q.ns.as_deref(), Some("ghcr.io"));
        assert_eq!(q.n, Some(10));
        assert_eq!(q.last.as_deref(), Some("a/b"));
    }
}
