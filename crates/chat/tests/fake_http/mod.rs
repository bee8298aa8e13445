//! The request side of the tests' fake OpenAI-compatible servers on loopback, shared by path
//! (chat's remote.rs, the server's api.rs, the CLI's api_keys.rs): one HTTP/1.1 request read from
//! a connection, its request line, the headers a fake looks at, and its `Content-Length` body.

// Each fake reads the parts it needs.
#![allow(dead_code)]

use std::io::BufRead;

/// One request as a fake server read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The `Authorization` header's value.
    pub auth: Option<String>,
    pub body: Vec<u8>,
}

/// The next request on a connection; `None` when the client closed it first (the end of a kept
/// alive connection).
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let (mut length, mut auth) = (0, None);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let Some((name, value)) = header.trim_end().split_once(':') else {
            break;
        };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => auth = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    Some(Request {
        method,
        path,
        auth,
        body,
    })
}
