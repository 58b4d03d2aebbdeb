//! The RFC 1413 wire format: a query line parsed into its port pair, and
//! the reply line for it.
//!
//! A query is `<port-on-server> , <port-on-client>` as the querying host
//! names them: the first port is on this host (the connecting client's
//! local port), the second on the querying host (the service's port).
//! Spaces and tabs may surround either port; the line ends in CR-LF (a
//! bare LF is accepted too). A reply is one line, ending in CR-LF:
//! `<port> , <port> : USERID : UNIX : <user>` or
//! `<port> , <port> : ERROR : <token>`.

/// The longest query line read, without its LF: RFC 1413 lets a server
/// bound it, and a real query is at most 13 bytes.
pub(super) const MAX_REQUEST: usize = 1000;

/// A valid query's ports, as the responder sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ports {
    /// The port on this host: the connecting client's local port.
    pub(super) here: u16,
    /// The port on the querying host: the service's port.
    pub(super) there: u16,
}

/// The port pair a reply echoes: a query's ports as written (decimal, up
/// to five digits each), or `0 , 0` when they could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Echo(pub(super) u32, pub(super) u32);

impl From<Ports> for Echo {
    fn from(ports: Ports) -> Self {
        Echo(u32::from(ports.here), u32::from(ports.there))
    }
}

/// What a reply says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer<'a> {
    /// `USERID : UNIX : <name>`: a login name.
    User(&'a str),
    /// `ERROR : <token>` (`NO-USER`, `INVALID-PORT`, ...).
    Error(&'static str),
}

/// The error token for a query that is not a valid port pair.
pub(super) const INVALID_PORT: &str = "INVALID-PORT";
/// The error token for a connection loopwarden knows nothing of.
pub(super) const NO_USER: &str = "NO-USER";
/// RFC 1413's answer when the owner cannot be determined: loopwarden
/// could not check that the connection is open.
pub(super) const UNKNOWN_ERROR: &str = "UNKNOWN-ERROR";

/// Parses one query line, without its LF (a trailing CR is dropped).
/// `Err` holds the ports to echo in the `INVALID-PORT` reply.
pub(super) fn parse(line: &[u8]) -> Result<Ports, Echo> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_REQUEST {
        return Err(Echo::default());
    }
    let mut halves = line.split(|&b| b == b',');
    let (Some(first), Some(second), None) = (halves.next(), halves.next(), halves.next()) else {
        return Err(Echo::default());
    };
    let (Some(here), Some(there)) = (number(first), number(second)) else {
        return Err(Echo::default());
    };
    match (port(here), port(there)) {
        (Some(here), Some(there)) => Ok(Ports { here, there }),
        _ => Err(Echo(here, there)),
    }
}

/// A decimal number between optional spaces and tabs, of five digits at
/// most once its leading zeros are gone (RFC 1413 asks only for a
/// non-negative integer: `00080` is port 80).
fn number(text: &[u8]) -> Option<u32> {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = text.iter().position(|b| !blank(b))?;
    let end = text.iter().rposition(|b| !blank(b))? + 1;
    let digits = &text[start..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len() - 1);
    let digits = &digits[first..];
    if digits.len() > 5 {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// A TCP port a query may name: 1 to 65535.
fn port(n: u32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// The reply line, CR-LF included.
pub(super) fn reply(ports: Echo, answer: Answer<'_>) -> String {
    let Echo(here, there) = ports;
    match answer {
        Answer::User(name) => format!("{here} , {there} : USERID : UNIX : {name}\r\n"),
        Answer::Error(token) => format!("{here} , {there} : ERROR : {token}\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(here: u16, there: u16) -> Result<Ports, Echo> {
        Ok(Ports { here, there })
    }

    #[test]
    fn valid_queries_in_every_spacing() {
        assert_eq!(parse(b"6193, 23\r"), ok(6193, 23));
        assert_eq!(parse(b"6193,23"), ok(6193, 23));
        assert_eq!(parse(b"  6193 \t,\t 23  \r"), ok(6193, 23));
        assert_eq!(parse(b"1 , 65535"), ok(1, 65535));
        assert_eq!(parse(b"00080 , 0113"), ok(80, 113));
    }

    #[test]
    fn out_of_range_ports_are_echoed() {
        assert_eq!(parse(b"0 , 80\r"), Err(Echo(0, 80)));
        assert_eq!(parse(b"70000 , 80"), Err(Echo(70000, 80)));
        assert_eq!(parse(b"80 , 65536"), Err(Echo(80, 65536)));
    }

    #[test]
    fn unreadable_queries_echo_zeros() {
        for line in [
            &b"abc"[..],
            b"",
            b"\r",
            b"80",
            b"80 ,",
            b", 80",
            b"80 , 81 , 82",
            b"80 : 81",
            b"-1 , 80",
            b"+80 , 80",
            b"8 0 , 80",
            b"123456 , 80",
            b"80 , 81\r\r",
            b"\xff , 80",
        ] {
            assert_eq!(parse(line), Err(Echo(0, 0)), "{line:?}");
        }
    }

    #[test]
    fn over_long_lines_are_invalid() {
        let mut line = vec![b' '; MAX_REQUEST - 6];
        line.extend_from_slice(b"80,113");
        assert_eq!(parse(&line), ok(80, 113));
        // The CR of a CR-LF is not the query's.
        line.push(b'\r');
        assert_eq!(parse(&line), ok(80, 113));
        line.insert(0, b' ');
        assert_eq!(parse(&line), Err(Echo(0, 0)));
    }

    #[test]
    fn leading_zeros_are_the_same_port() {
        assert_eq!(parse(b"000080 , 0000113"), ok(80, 113));
        assert_eq!(parse(b"0, 113"), Err(Echo(0, 113)));
        assert_eq!(parse(b"000000, 113"), Err(Echo(0, 113)));
        assert_eq!(parse(b"0065536, 113"), Err(Echo(65536, 113)));
        assert_eq!(parse(b"100000, 113"), Err(Echo(0, 0)));
    }

    #[test]
    fn replies_end_in_crlf() {
        let ports = Echo::from(Ports {
            here: 6193,
            there: 23,
        });
        assert_eq!(
            reply(ports, Answer::User("stjohns")),
            "6193 , 23 : USERID : UNIX : stjohns\r\n"
        );
        assert_eq!(
            reply(ports, Answer::Error(NO_USER)),
            "6193 , 23 : ERROR : NO-USER\r\n"
        );
        assert_eq!(
            reply(Echo::default(), Answer::Error(INVALID_PORT)),
            "0 , 0 : ERROR : INVALID-PORT\r\n"
        );
    }
}
