//! The route templates `proxy` and `watch` count under: from `--route` flags or
//! an OpenAPI 3 document's `paths`. Checked at start-up — a bad template is a
//! clear error, never a panic inside the router. The proxy hands them to axum's
//! router; `watch`, which sees raw request paths, matches them with
//! [`RouteMatcher`] — the same matchit rules, so both count a path alike.

use std::fmt;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

/// A bad template or OpenAPI file: one line, fit for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError(String);

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteError {}

/// Checked route templates (`/users/{id}`, `/files/{*path}`), in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    templates: Vec<String>,
}

impl RouteTable {
    /// Checks `templates` the way the router will: syntax and conflicts.
    pub fn new(templates: impl IntoIterator<Item = String>) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        let mut matcher = matchit::Router::new();
        for template in templates {
            check_syntax(&template)?;
            if table.templates.contains(&template) {
                continue;
            }
            matcher.insert(template.as_str(), ()).map_err(|e| {
                RouteError(match e {
                    matchit::InsertError::Conflict { with } => format!(
                        "route '{template}' conflicts with route '{with}': a path would match \
                         both (keep one, or make them differ in a fixed segment)"
                    ),
                    other => format!("route '{template}': {other}"),
                })
            })?;
            table.templates.push(template);
        }
        Ok(table)
    }

    /// The route templates of an OpenAPI 3 document (YAML or JSON): the keys of `paths`.
    pub fn from_openapi(path: &Path) -> Result<Self, RouteError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| RouteError(format!("cannot read --openapi {shown}: {e}")))?;
        let in_file = |e: &dyn std::fmt::Display| RouteError(format!("--openapi {shown}: {e}"));
        Self::new(openapi_paths(&text).map_err(|e| in_file(&e))?).map_err(|e| in_file(&e))
    }

    /// Adds the templates of `other` (after this table's).
    pub fn merge(self, other: RouteTable) -> Result<Self, RouteError> {
        RouteTable::new(self.templates.into_iter().chain(other.templates))
    }

    /// The templates.
    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// A matcher of raw request paths against these templates.
    pub fn matcher(&self) -> RouteMatcher {
        let mut router = matchit::Router::new();
        for (i, template) in self.templates.iter().enumerate() {
            // Checked in `new`: the same inserts succeeded there.
            if router.insert(template.as_str(), i).is_err() {
                continue;
            }
        }
        RouteMatcher {
            router,
            templates: self.templates.clone(),
            shared: self.templates.iter().map(|t| t.as_str().into()).collect(),
        }
    }
}

/// Finds the template a raw request path falls under, as axum's router would.
#[derive(Clone)]
pub struct RouteMatcher {
    router: matchit::Router<usize>,
    templates: Vec<String>,
    /// The same, shared: what a request in flight keeps (no copy per request).
    shared: Vec<std::sync::Arc<str>>,
}

impl RouteMatcher {
    /// The template `path` matches (no query: strip it first), or `None`.
    ///
    /// ```
    /// use clientgone_agent::routes::RouteTable;
    ///
    /// let table = RouteTable::new(["/users/{id}".to_owned()]).unwrap();
    /// let matcher = table.matcher();
    /// assert_eq!(matcher.template("/users/42"), Some("/users/{id}"));
    /// assert_eq!(matcher.template("/users/42/posts"), None);
    /// ```
    pub fn template(&self, path: &str) -> Option<&str> {
        let found = self.router.at(path).ok()?;
        self.templates.get(*found.value).map(String::as_str)
    }

    /// [`template`](Self::template), as a shared string a request can keep.
    pub fn template_shared(&self, path: &str) -> Option<std::sync::Arc<str>> {
        let found = self.router.at(path).ok()?;
        self.shared.get(*found.value).cloned()
    }
}

impl std::fmt::Debug for RouteMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMatcher")
            .field("templates", &self.templates)
            .finish()
    }
}

/// The keys of `paths` in an OpenAPI document. JSON is YAML, so one parser reads both.
pub fn openapi_paths(text: &str) -> Result<Vec<String>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let doc = docs.first().ok_or("the document is empty")?;
    match &doc["openapi"] {
        Yaml::String(v) if v.starts_with("3.") => {}
        Yaml::BadValue => return Err("no 'openapi' field: is this an OpenAPI 3 document?".into()),
        other => return Err(format!("'openapi: {other:?}' is not a 3.x version")),
    }
    let paths = doc["paths"]
        .as_hash()
        .ok_or("no 'paths' mapping")?
        .keys()
        .map(|k| {
            k.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("path key {k:?} is not a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if paths.is_empty() {
        return Err("'paths' is empty".into());
    }
    Ok(paths)
}

fn check_syntax(template: &str) -> Result<(), RouteError> {
    let bad = |why: &str| Err(RouteError(format!("route '{template}': {why}")));
    if !template.starts_with('/') {
        return bad("must start with '/'");
    }
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("must not contain spaces or control characters");
    }
    let segments: Vec<&str> = template.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let Some(inner) = segment.strip_prefix('{') else {
            // axum 0.7's syntax, which axum 0.8 refuses (with a panic).
            if let Some(sigil) = segment.chars().next().filter(|c| matches!(c, ':' | '*')) {
                return bad(&format!(
                    "a segment must not start with '{sigil}': write parameters as {{id}} and a catch-all as {{*rest}}"
                ));
            }
            if segment.contains(['{', '}']) {
                return bad("a parameter must be a whole segment, like /users/{id}");
            }
            continue;
        };
        let Some(name) = inner.strip_suffix('}') else {
            return bad("unclosed '{'");
        };
        let name = match name.strip_prefix('*') {
            Some(rest) if i + 1 == segments.len() => rest,
            Some(_) => return bad("a catch-all {*name} must be the last segment"),
            None => name,
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad("parameter names are letters, digits and '_'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(t: &[&str]) -> Result<RouteTable, RouteError> {
        RouteTable::new(t.iter().map(|s| s.to_string()))
    }

    #[test]
    fn good_templates_pass_and_duplicates_fold() {
        let t = table(&["/users/{id}", "/files/{*path}", "/", "/users/{id}", "/a/b"]).unwrap();
        assert_eq!(
            t.templates(),
            ["/users/{id}", "/files/{*path}", "/", "/a/b"]
        );
    }

    #[test]
    fn bad_templates_are_clear_errors() {
        for bad in [
            "users/{id}",
            "/users/{id",
            "/users/x{id}",
            "/files/{*path}/more",
            "/users/{}",
            "/users/{i-d}",
            "/with space",
            "/users/:id",
            "/files/*rest",
        ] {
            let e = table(&[bad]).unwrap_err();
            assert!(e.to_string().starts_with(&format!("route '{bad}'")), "{e}");
        }
        let e = table(&["/users/{id}", "/users/{name}"]).unwrap_err();
        assert!(e.to_string().contains("/users/{name}"), "{e}");
    }

    #[test]
    fn the_matcher_finds_templates_as_the_router_does() {
        let m = table(&["/users/{id}", "/files/{*path}", "/", "/a/b"])
            .unwrap()
            .matcher();
        for (path, want) in [
            ("/users/7", Some("/users/{id}")),
            ("/users/", None),
            ("/users/7/", None),
            ("/files/a/b/c", Some("/files/{*path}")),
            ("/", Some("/")),
            ("/a/b", Some("/a/b")),
            ("/a/c", None),
            ("", None),
            ("*", None),
        ] {
            assert_eq!(m.template(path), want, "{path}");
        }
    }

    #[test]
    fn openapi_paths_from_yaml_and_json() {
        let yaml = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /users/{id}:\n    get: {}\n  /health:\n    get: {}\n";
        assert_eq!(openapi_paths(yaml).unwrap(), ["/users/{id}", "/health"]);
        let json = r#"{"openapi": "3.1.0", "paths": {"/a/{x}": {}, "/b": {}}}"#;
        assert_eq!(openapi_paths(json).unwrap(), ["/a/{x}", "/b"]);
        for bad in [
            "swagger: '2.0'\npaths: {}",
            "openapi: 3.0.0",
            "openapi: 3.0.0\npaths: {}",
            "[",
            "",
        ] {
            assert!(openapi_paths(bad).is_err(), "{bad:?}");
        }
    }
}
