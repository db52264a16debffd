//! Secrets out of sight: a URL's password replaced by `***` wherever a URL is printed
//! (check-config, errors, logs), whether it is in the URL's user part, in a query
//! parameter (`?password=`, as PostgreSQL and Redis clients take it) or in a PostgreSQL
//! `key=value` connection string.

/// Query parameters and connection-string keys whose values are secrets.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "token", "sslkey"]
        .iter()
        .any(|s| key.contains(s))
}

/// `text` with every password in it replaced by `***`: the password of a
/// `scheme://user:password@host` URL, the value of a secret query parameter, and the value
/// of a secret key of a `host=… password=…` connection string.
pub fn url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return key_values(text);
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = &rest[authority_end..];
    let (path, query, fragment) = match tail.find('?') {
        Some(q) => {
            let after = &tail[q + 1..];
            let end = after.find('#').unwrap_or(after.len());
            (&tail[..q], Some(&after[..end]), &after[end..])
        }
        None => (tail, None, ""),
    };
    let query = query.map(|query| {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    format!(
        "{}://{authority}{path}{}{fragment}",
        &text[..scheme_end],
        query.unwrap_or_default()
    )
}

/// A `key=value key='value'` connection string with secret values hidden.
fn key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq]
            .rfind(|c: char| c.is_whitespace())
            .map_or(0, |i| i + 1);
        let key = rest[key_start..eq].trim();
        out.push_str(&rest[..=eq]);
        let value = &rest[eq + 1..];
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |i| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        if is_secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&value[..end]);
        }
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            url("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            url("rediss://app:p@ss@redis:6380"),
            "rediss://app:***@redis:6380"
        );
        assert_eq!(url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(url("redis://user@host"), "redis://user@host");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn passwords_in_queries_and_connection_strings_are_hidden() {
        assert_eq!(
            url("postgres://evr@db:5432/events?password=hunter2&sslmode=require"),
            "postgres://evr@db:5432/events?password=***&sslmode=require"
        );
        assert_eq!(
            url("postgresql://db/events?sslmode=disable&PassWord=x#frag"),
            "postgresql://db/events?sslmode=disable&PassWord=***#frag"
        );
        assert_eq!(
            url("host=db user=evr password=hunter2 dbname=events"),
            "host=db user=evr password=*** dbname=events"
        );
        assert_eq!(
            url("host=db password='two words' dbname=events"),
            "host=db password=*** dbname=events"
        );
        assert_eq!(
            url("redis://h:6379/0?token=abc"),
            "redis://h:6379/0?token=***"
        );
    }
}
