//! The values handlers see and return: `ApiRequest`, `ApiResponse`, and `ApiError`, the only
//! error that reaches a client. Pure data; no I/O except `Body::File`.
//!
//! Error bodies follow Phoenix's JSON conventions:
//! `{"errors":{"detail":"Not Found"}}` for status errors and
//! `{"errors":{"name":["can't be blank"]}}` for validation errors (422).

use std::fs::File;

use serde::Serialize;
use serde_json::{Value, json};

use crate::store::{self, FieldErrors};

/// An HTTP method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

/// A request after the transport: path without query, lower-cased header names, and the body
/// (read only for routes that take one).
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    File { file: File, len: usize },
}

#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

/// An error response. `From<store::Error>` decides the status mapping in one place.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    errors: Value,
    headers: Vec<(&'static str, String)>,
}

pub const JSON: &str = "application/json; charset=utf-8";

/// Phoenix's JSON view envelope, `{"data": ...}`; serializing it directly keeps the fields of
/// `data` in declaration order (a `serde_json::Value` would sort them).
#[derive(Serialize)]
pub struct Data<T: Serialize> {
    pub data: T,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    /// Parses an upper-case method name as used in the route table and openapi.yaml.
    pub fn parse(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

impl ApiRequest {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl ApiResponse {
    /// A JSON response. Our types serialize infallibly (no maps with non-string keys).
    pub fn json(status: u16, value: &impl Serialize) -> ApiResponse {
        let bytes = serde_json::to_vec(value).expect("our response types always serialize");
        ApiResponse {
            status,
            headers: vec![("Content-Type", JSON.to_owned())],
            body: Body::Bytes(bytes),
        }
    }

    pub fn html(status: u16, html: String) -> ApiResponse {
        let content_type = "text/html; charset=utf-8".to_owned();
        ApiResponse {
            status,
            headers: vec![("Content-Type", content_type)],
            body: Body::Bytes(html.into_bytes()),
        }
    }

    pub fn empty(status: u16) -> ApiResponse {
        ApiResponse { status, headers: Vec::new(), body: Body::Empty }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiResponse {
        self.headers.push((name, value.into()));
        self
    }
}

impl ApiError {
    /// `{"errors":{"detail": <reason phrase>}}` for `status`.
    pub fn status(status: u16) -> ApiError {
        ApiError { status, errors: json!({"detail": reason(status)}), headers: Vec::new() }
    }

    pub fn not_found() -> ApiError {
        ApiError::status(404)
    }

    /// 400 with `"Bad Request: <why>"`.
    pub fn bad_request(why: impl std::fmt::Display) -> ApiError {
        ApiError::detailed(400, why)
    }

    /// `{"errors":{"detail": "<reason phrase>: <why>"}}`.
    pub fn detailed(status: u16, why: impl std::fmt::Display) -> ApiError {
        let detail = format!("{}: {why}", reason(status));
        ApiError { status, errors: json!({"detail": detail}), headers: Vec::new() }
    }

    /// 405 with the `Allow` header listing what the path does accept.
    pub fn method_not_allowed(allow: String) -> ApiError {
        ApiError::status(405).with_header("Allow", allow)
    }

    pub fn unprocessable(errors: &FieldErrors) -> ApiError {
        let errors = serde_json::to_value(errors).expect("field errors serialize");
        ApiError { status: 422, errors, headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self) -> ApiResponse {
        let mut response = ApiResponse::json(self.status, &json!({"errors": self.errors}));
        response.headers.extend(self.headers);
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> ApiError {
        if e.is_not_found() {
            ApiError::not_found()
        } else if let Some(errors) = e.field_errors() {
            ApiError::unprocessable(errors)
        } else if e.is_unavailable() {
            log::warn!("database unavailable: {e}");
            ApiError::status(503)
        } else {
            log::error!("store error: {e}");
            ApiError::status(500)
        }
    }
}

/// The body of the errors tiny_http answers before a request reaches a handler (a malformed
/// head, ambiguous framing, a deadline, the connection limit), in the same shape as ours.
/// An empty `why` gives the bare reason phrase, as `ApiError::status` does.
pub fn transport_error_body(status: u16, why: &str) -> Vec<u8> {
    let error =
        if why.is_empty() { ApiError::status(status) } else { ApiError::detailed(status, why) };
    serde_json::to_vec(&json!({"errors": error.errors})).expect("JSON values serialize")
}

/// The reason phrases Phoenix uses in `{"errors":{"detail": ..}}`.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Internal Server Error",
    }
}
