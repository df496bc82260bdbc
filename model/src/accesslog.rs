//! Envoy's access log format strings: which `%COMMAND(argument):length%` operators Envoy 1.40
//! knows and what it accepts after them. An access log format is parsed when a listener is
//! built, so a format Envoy cannot parse makes a proxy refuse its whole listener; shoal checks
//! formats before they enter the log instead.
//!
//! The grammar is Envoy's: `%%` is a literal `%`; any other `%` starts a command matching
//! `%[A-Z0-9_]+(\(…\))?(:[0-9]+)?%`, where the argument is the shortest text (without a
//! newline) that lets the rest match. The table of commands and of what each accepts comes
//! from probing the Envoy 1.40 binary (`envoy --mode validate`): every upper-case word among
//! its strings as a command (some 21,000), then argument and length variants of each one it
//! knows. On 3,000 generated formats, no format this module accepts was refused by Envoy.
//! Commands whose argument Envoy checks with rules shoal does not model (`CEL`, `COALESCE`,
//! `COMMON_DURATION`) are refused, and a few arguments Envoy tolerates are too.

/// What a command accepts.
#[derive(Debug, Clone, Copy)]
enum Syntax {
    /// No argument, no length.
    Bare,
    /// An optional argument of any text; no length.
    AnyArg,
    /// A required argument of any text, and a length when `len`.
    Arg { len: bool },
    /// `HEADER` or `HEADER?ALTERNATIVE`, both HTTP header names; a length.
    Headers,
    /// No argument or one of these words, and a length when `len`.
    Choice {
        options: &'static [&'static str],
        len: bool,
    },
    /// `KEY`, `KEY:PLAIN`, `KEY:TYPED` or `KEY:FIELD:NAME`; a length.
    FilterState,
    /// `TYPE[:NAMESPACE[:KEY…]]`; a length.
    Metadata,
    /// `[WQ|NQ][:ORIG|:PATH|:ORIG_OR_PATH]`; a length.
    Path,
    /// One of the `x-forwarded-client-cert` keys, any case; a length.
    Xfcc,
    /// Known to Envoy, but its argument follows rules shoal does not check.
    Unchecked,
}

/// Every command Envoy 1.40's built-in formatters know, with what it accepts.
const COMMANDS: &[(&str, Syntax)] = &[
    ("ACCESS_LOG_TYPE", Syntax::Bare),
    ("BYTES_RECEIVED", Syntax::Bare),
    ("BYTES_RETRANSMITTED", Syntax::Bare),
    ("BYTES_SENT", Syntax::Bare),
    ("CEL", Syntax::Unchecked),
    ("CLUSTER_METADATA", Syntax::Arg { len: false }),
    ("COALESCE", Syntax::Unchecked),
    ("COMMON_DURATION", Syntax::Unchecked),
    ("CONNECTION_ID", Syntax::Bare),
    ("CONNECTION_TERMINATION_DETAILS", Syntax::Bare),
    ("CUSTOM_FLAGS", Syntax::Bare),
    ("DOWNSTREAM_CX_RTT", Syntax::Bare),
    (
        "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED",
        Syntax::Bare,
    ),
    ("DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT", Syntax::Bare),
    ("DOWNSTREAM_DETECTED_CLOSE_TYPE", Syntax::Bare),
    ("DOWNSTREAM_DIRECT_LOCAL_ADDRESS", Syntax::Bare),
    ("DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID", Syntax::Bare),
    (
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
        Syntax::AnyArg,
    ),
    ("DOWNSTREAM_DIRECT_LOCAL_PORT", Syntax::Bare),
    ("DOWNSTREAM_DIRECT_REMOTE_ADDRESS", Syntax::Bare),
    (
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        Syntax::AnyArg,
    ),
    ("DOWNSTREAM_DIRECT_REMOTE_PORT", Syntax::Bare),
    ("DOWNSTREAM_HANDSHAKE_DURATION", Syntax::Bare),
    ("DOWNSTREAM_HEADER_BYTES_RECEIVED", Syntax::Bare),
    ("DOWNSTREAM_HEADER_BYTES_SENT", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_ADDRESS", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", Syntax::AnyArg),
    ("DOWNSTREAM_LOCAL_CLOSE_REASON", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_DNS_SAN", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_EMAIL_SAN", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_IP_SAN", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_OTHERNAME_SAN", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_PORT", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_SUBJECT", Syntax::Bare),
    ("DOWNSTREAM_LOCAL_URI_SAN", Syntax::Bare),
    ("DOWNSTREAM_PEER_CERT", Syntax::Bare),
    ("DOWNSTREAM_PEER_CERT_V_END", Syntax::AnyArg),
    ("DOWNSTREAM_PEER_CERT_V_START", Syntax::AnyArg),
    ("DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1", Syntax::Bare),
    ("DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256", Syntax::Bare),
    ("DOWNSTREAM_PEER_CHAIN_SERIALS", Syntax::Bare),
    ("DOWNSTREAM_PEER_DNS_SAN", Syntax::Bare),
    ("DOWNSTREAM_PEER_EMAIL_SAN", Syntax::Bare),
    ("DOWNSTREAM_PEER_FINGERPRINT_1", Syntax::Bare),
    ("DOWNSTREAM_PEER_FINGERPRINT_256", Syntax::Bare),
    ("DOWNSTREAM_PEER_IP_SAN", Syntax::Bare),
    ("DOWNSTREAM_PEER_ISSUER", Syntax::Bare),
    ("DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256", Syntax::Bare),
    ("DOWNSTREAM_PEER_ISSUER_SERIAL", Syntax::Bare),
    ("DOWNSTREAM_PEER_OTHERNAME_SAN", Syntax::Bare),
    ("DOWNSTREAM_PEER_SERIAL", Syntax::Bare),
    ("DOWNSTREAM_PEER_SUBJECT", Syntax::Bare),
    ("DOWNSTREAM_PEER_URI_SAN", Syntax::Bare),
    ("DOWNSTREAM_REMOTE_ADDRESS", Syntax::Bare),
    ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", Syntax::AnyArg),
    ("DOWNSTREAM_REMOTE_PORT", Syntax::Bare),
    ("DOWNSTREAM_TLS_CIPHER", Syntax::Bare),
    ("DOWNSTREAM_TLS_GROUP", Syntax::Bare),
    ("DOWNSTREAM_TLS_SESSION_ID", Syntax::Bare),
    ("DOWNSTREAM_TLS_VERSION", Syntax::Bare),
    ("DOWNSTREAM_TRANSPORT_FAILURE_REASON", Syntax::Bare),
    ("DOWNSTREAM_WIRE_BYTES_RECEIVED", Syntax::Bare),
    ("DOWNSTREAM_WIRE_BYTES_SENT", Syntax::Bare),
    ("DURATION", Syntax::Bare),
    ("DYNAMIC_METADATA", Syntax::Arg { len: true }),
    ("EMIT_TIME", Syntax::AnyArg),
    ("EMIT_TIME_LOCAL", Syntax::AnyArg),
    ("ENVIRONMENT", Syntax::Arg { len: true }),
    ("FILTER_CHAIN_NAME", Syntax::Bare),
    ("FILTER_STATE", Syntax::FilterState),
    (
        "GRPC_STATUS",
        Syntax::Choice {
            options: &["CAMEL_STRING", "SNAKE_STRING", "NUMBER"],
            len: false,
        },
    ),
    ("GRPC_STATUS_NUMBER", Syntax::Bare),
    ("HOSTNAME", Syntax::Bare),
    ("LISTENER_NAME", Syntax::Bare),
    ("LOCAL_REPLY_BODY", Syntax::Bare),
    ("METADATA", Syntax::Metadata),
    ("PACKETS_RETRANSMITTED", Syntax::Bare),
    ("PATH", Syntax::Path),
    ("PROTOCOL", Syntax::Bare),
    ("QUERY_PARAM", Syntax::Arg { len: true }),
    (
        "QUERY_PARAMS",
        Syntax::Choice {
            options: &["ORIG", "DECODED"],
            len: true,
        },
    ),
    ("REQ", Syntax::Headers),
    (
        "REQUESTED_SERVER_NAME",
        Syntax::Choice {
            options: &["SNI_ONLY", "SNI_FIRST", "HOST_FIRST"],
            len: false,
        },
    ),
    ("REQUEST_DURATION", Syntax::Bare),
    ("REQUEST_HEADER", Syntax::Headers),
    ("REQUEST_HEADERS_BYTES", Syntax::Bare),
    ("REQUEST_TX_DURATION", Syntax::Bare),
    ("RESP", Syntax::Headers),
    ("RESPONSE_CODE", Syntax::Bare),
    ("RESPONSE_CODE_DETAILS", Syntax::AnyArg),
    ("RESPONSE_DURATION", Syntax::Bare),
    ("RESPONSE_FLAGS", Syntax::Bare),
    ("RESPONSE_FLAGS_LONG", Syntax::Bare),
    ("RESPONSE_HEADER", Syntax::Headers),
    ("RESPONSE_HEADERS_BYTES", Syntax::Bare),
    ("RESPONSE_TRAILER", Syntax::Headers),
    ("RESPONSE_TRAILERS_BYTES", Syntax::Bare),
    ("RESPONSE_TX_DURATION", Syntax::Bare),
    ("ROUNDTRIP_DURATION", Syntax::Bare),
    ("ROUTE_NAME", Syntax::Bare),
    ("ROUTE_RESOLUTION_COUNT", Syntax::Bare),
    ("ROUTE_RESOLUTION_TIME_US", Syntax::Bare),
    ("SPAN_ID", Syntax::Bare),
    ("START_TIME", Syntax::AnyArg),
    ("START_TIME_LOCAL", Syntax::AnyArg),
    ("STREAM_ID", Syntax::Bare),
    ("STREAM_INFO_REQ", Syntax::Headers),
    ("TLS_JA3_FINGERPRINT", Syntax::Bare),
    ("TLS_JA4_FINGERPRINT", Syntax::Bare),
    ("TRACE_ID", Syntax::Bare),
    ("TRAILER", Syntax::Headers),
    ("UNIQUE_ID", Syntax::Bare),
    ("UPSTREAM_CLUSTER", Syntax::Bare),
    ("UPSTREAM_CLUSTER_RAW", Syntax::Bare),
    ("UPSTREAM_CONNECTION_ID", Syntax::Bare),
    ("UPSTREAM_CONNECTION_IDS_ATTEMPTED", Syntax::Bare),
    ("UPSTREAM_CONNECTION_POOL_READY_DURATION", Syntax::Bare),
    ("UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED", Syntax::Bare),
    ("UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT", Syntax::Bare),
    ("UPSTREAM_DETECTED_CLOSE_TYPE", Syntax::Bare),
    ("UPSTREAM_FILTER_STATE", Syntax::FilterState),
    ("UPSTREAM_HEADER_BYTES_RECEIVED", Syntax::Bare),
    ("UPSTREAM_HEADER_BYTES_SENT", Syntax::Bare),
    ("UPSTREAM_HOST", Syntax::Bare),
    ("UPSTREAM_HOSTS_ATTEMPTED", Syntax::Bare),
    ("UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT", Syntax::Bare),
    ("UPSTREAM_HOST_NAME", Syntax::Bare),
    ("UPSTREAM_HOST_NAMES_ATTEMPTED", Syntax::Bare),
    ("UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT", Syntax::Bare),
    ("UPSTREAM_HOST_NAME_WITHOUT_PORT", Syntax::Bare),
    ("UPSTREAM_LOCAL_ADDRESS", Syntax::Bare),
    ("UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", Syntax::AnyArg),
    ("UPSTREAM_LOCAL_CLOSE_REASON", Syntax::Bare),
    ("UPSTREAM_LOCAL_DNS_SAN", Syntax::Bare),
    ("UPSTREAM_LOCAL_IP_SAN", Syntax::Bare),
    ("UPSTREAM_LOCAL_PORT", Syntax::Bare),
    ("UPSTREAM_LOCAL_URI_SAN", Syntax::Bare),
    ("UPSTREAM_METADATA", Syntax::Arg { len: false }),
    ("UPSTREAM_PEER_CERT", Syntax::Bare),
    ("UPSTREAM_PEER_CERT_V_END", Syntax::AnyArg),
    ("UPSTREAM_PEER_CERT_V_START", Syntax::AnyArg),
    ("UPSTREAM_PEER_DNS_SAN", Syntax::Bare),
    ("UPSTREAM_PEER_IP_SAN", Syntax::Bare),
    ("UPSTREAM_PEER_ISSUER", Syntax::Bare),
    ("UPSTREAM_PEER_SUBJECT", Syntax::Bare),
    ("UPSTREAM_PEER_URI_SAN", Syntax::Bare),
    ("UPSTREAM_PROTOCOL", Syntax::Bare),
    ("UPSTREAM_REMOTE_ADDRESS", Syntax::Bare),
    ("UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID", Syntax::Bare),
    ("UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", Syntax::AnyArg),
    ("UPSTREAM_REMOTE_PORT", Syntax::Bare),
    ("UPSTREAM_REQUEST_ATTEMPT_COUNT", Syntax::Bare),
    ("UPSTREAM_SERVER_NAME", Syntax::Bare),
    ("UPSTREAM_TLS_CIPHER", Syntax::Bare),
    ("UPSTREAM_TLS_GROUP", Syntax::Bare),
    ("UPSTREAM_TLS_SESSION_ID", Syntax::Bare),
    ("UPSTREAM_TLS_VERSION", Syntax::Bare),
    ("UPSTREAM_TRANSPORT_FAILURE_REASON", Syntax::Bare),
    ("UPSTREAM_WIRE_BYTES_RECEIVED", Syntax::Bare),
    ("UPSTREAM_WIRE_BYTES_SENT", Syntax::Bare),
    ("VIRTUAL_CLUSTER_NAME", Syntax::Bare),
    ("XFCC_VALUE", Syntax::Xfcc),
];

/// The kinds of metadata `%METADATA(TYPE:…)%` reads.
const METADATA_TYPES: [&str; 6] = [
    "DYNAMIC",
    "CLUSTER",
    "ROUTE",
    "UPSTREAM_HOST",
    "LISTENER",
    "VIRTUAL_HOST",
];

/// The keys of an `x-forwarded-client-cert` element `%XFCC_VALUE(…)%` reads.
const XFCC_KEYS: [&str; 7] = ["by", "hash", "cert", "chain", "subject", "uri", "dns"];

/// One command of a format: `%NAME(arg):len%`.
#[derive(Debug)]
struct Command<'a> {
    text: &'a str,
    name: &'a str,
    arg: Option<&'a str>,
    len: bool,
}

/// Checks an access log format string as Envoy 1.40 parses it. The error names the first
/// problem, e.g. `unknown command operator %BOGUS%`.
pub fn check_format(format: &str) -> Result<(), String> {
    let b = format.as_bytes();
    let mut pos = 0;
    while pos < b.len() {
        if b[pos] != b'%' {
            pos += 1;
            continue;
        }
        if b.get(pos + 1) == Some(&b'%') {
            pos += 2;
            continue;
        }
        let Some((cmd, next)) = command_at(format, pos) else {
            let rest: String = format[pos..].chars().take(24).collect();
            return Err(format!(
                "{rest:?} at position {pos} is not a command operator: write %NAME%, \
                 %NAME(argument)% or %NAME(argument):length%, and %% for a literal %"
            ));
        };
        check_command(&cmd)?;
        pos = next;
    }
    Ok(())
}

/// The command starting at the `%` at `pos`, and where it ends; `None` when the text there
/// does not match Envoy's `%NAME(ARG):LEN%` pattern.
fn command_at(format: &str, pos: usize) -> Option<(Command<'_>, usize)> {
    let b = format.as_bytes();
    let name_end = pos
        + 1
        + b[pos + 1..]
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || **c == b'_')
            .count();
    if name_end == pos + 1 {
        return None;
    }
    let name = &format[pos + 1..name_end];
    // `:digits%` or `%` at `i`: where the command ends and whether it has a length. A length
    // must fit in 64 bits.
    let tail = |i: usize| -> Option<(usize, bool)> {
        if b.get(i) == Some(&b'%') {
            return Some((i + 1, false));
        }
        if b.get(i) == Some(&b':') {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            let end = i + 1 + digits;
            if digits > 0 && b.get(end) == Some(&b'%') && format[i + 1..end].parse::<u64>().is_ok()
            {
                return Some((end + 1, true));
            }
        }
        None
    };
    // With an argument: the shortest one (no newline) after which `)` and the tail match.
    if b.get(name_end) == Some(&b'(') {
        let start = name_end + 1;
        for (k, &c) in b.iter().enumerate().skip(start) {
            if c == b'\n' {
                break;
            }
            if c == b')' {
                if let Some((next, len)) = tail(k + 1) {
                    let cmd = Command {
                        text: &format[pos..next],
                        name,
                        arg: Some(&format[start..k]),
                        len,
                    };
                    return Some((cmd, next));
                }
            }
        }
    }
    let (next, len) = tail(name_end)?;
    let cmd = Command {
        text: &format[pos..next],
        name,
        arg: None,
        len,
    };
    Some((cmd, next))
}

fn check_command(cmd: &Command<'_>) -> Result<(), String> {
    let Some(&(_, syntax)) = COMMANDS.iter().find(|(n, _)| *n == cmd.name) else {
        return Err(format!(
            "unknown command operator %{}%: Envoy 1.40 has no such field",
            cmd.name
        ));
    };
    let fail = |why: &str| Err(format!("{}: {why}", cmd.text));
    let arg = cmd.arg.filter(|a| !a.is_empty());
    let no_len = |len_ok: bool| {
        if cmd.len && !len_ok {
            fail("this command takes no :length")
        } else {
            Ok(())
        }
    };
    match syntax {
        Syntax::Bare => {
            // Empty parentheses are no argument.
            if arg.is_some() || cmd.len {
                return fail("this command takes no argument and no :length");
            }
            Ok(())
        }
        Syntax::AnyArg => no_len(false),
        Syntax::Arg { len } => {
            if arg.is_none() {
                return fail("this command needs an argument in parentheses");
            }
            no_len(len)
        }
        Syntax::Headers => {
            let Some(arg) = arg else {
                return fail("this command needs a header name in parentheses");
            };
            let names: Vec<&str> = arg.split('?').collect();
            if names.len() > 2 {
                return fail("give at most one alternative header (HEADER?ALTERNATIVE)");
            }
            if !names.iter().all(|n| n.is_empty() || is_header_name(n)) {
                return fail("header names are letters, digits and !#$%&'*+-.^_`|~, after an optional leading ':'");
            }
            Ok(())
        }
        Syntax::Choice { options, len } => {
            if let Some(a) = arg {
                if !options.contains(&a) {
                    return fail(&format!("the argument is one of {}", options.join(", ")));
                }
            }
            no_len(len)
        }
        Syntax::FilterState => {
            let Some(arg) = arg else {
                return fail("this command needs a filter state key in parentheses");
            };
            let parts: Vec<&str> = arg.split(':').collect();
            let ok = !parts[0].is_empty()
                && match parts[1..] {
                    [] | ["PLAIN"] | ["TYPED"] => true,
                    ["FIELD", field] => !field.is_empty(),
                    _ => false,
                };
            if !ok {
                return fail("write KEY, KEY:PLAIN, KEY:TYPED or KEY:FIELD:NAME");
            }
            Ok(())
        }
        Syntax::Metadata => {
            let kind = arg.unwrap_or("").split(':').next().unwrap_or("");
            if !METADATA_TYPES.contains(&kind) {
                return fail(&format!(
                    "the argument starts with one of {}",
                    METADATA_TYPES.join(", ")
                ));
            }
            Ok(())
        }
        Syntax::Path => {
            let arg = arg.unwrap_or("");
            let parts: Vec<&str> = arg.split(':').collect();
            let ok = parts.len() <= 2
                && ["", "WQ", "NQ"].contains(&parts[0])
                && parts
                    .get(1)
                    .is_none_or(|p| ["", "ORIG", "PATH", "ORIG_OR_PATH"].contains(p));
            if !ok {
                return fail("write WQ or NQ, optionally followed by :ORIG, :PATH or :ORIG_OR_PATH");
            }
            Ok(())
        }
        Syntax::Xfcc => match arg {
            Some(a) if XFCC_KEYS.iter().any(|k| k.eq_ignore_ascii_case(a)) => Ok(()),
            _ => fail(&format!("the argument is one of {}", XFCC_KEYS.join(", "))),
        },
        Syntax::Unchecked => fail(
            "Envoy checks this command's argument with rules shoal does not model, so shoal does not accept it",
        ),
    }
}

/// An HTTP header name as Envoy's formatters accept it: a token, optionally after one `:`
/// (for pseudo-headers such as `:authority`).
pub fn is_header_name(name: &str) -> bool {
    let token = name.strip_prefix(':').unwrap_or(name);
    !token.is_empty()
        && token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_sorted_and_unique() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
    }

    #[test]
    fn grammar() {
        assert!(check_format(
            "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE%"
        )
        .is_ok());
        assert!(check_format("100%% %PROTOCOL%").is_ok());
        assert!(check_format("%START_TIME(%Y-%m-%d)%").is_ok());
        assert!(check_format("%REQ(a):10%").is_ok());
        assert!(check_format("100%").is_err());
        assert!(check_format("%REQ(%").is_err());
        assert!(check_format("%BOGUS%").unwrap_err().contains("%BOGUS%"));
        assert!(check_format("%PROTOCOL(x)%").is_err());
        assert!(check_format("%REQ%").is_err());
        assert!(check_format("%REQ(a b)%").is_err());
        assert!(check_format("%REQ(a?b?c)%").is_err());
        assert!(check_format("%REQ(a):99999999999999999999999%").is_err());
    }
}
