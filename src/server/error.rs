//! Errors as OpenAI clients expect them: a status code and `{"error": {message, type, param, code}}`.

use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: 400, message: message.into(), param: None }
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: 404, message: message.into(), param: None }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { status: 503, message: message.into(), param: None }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: 500, message: message.into(), param: None }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            400 => "BadRequestError",
            404 => "NotFoundError",
            405 => "MethodNotAllowed",
            413 => "RequestTooLarge",
            503 => "ServiceUnavailableError",
            _ => "InternalServerError",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.status}})
    }
}

impl From<crate::engine::SubmitError> for ApiError {
    fn from(e: crate::engine::SubmitError) -> Self {
        match e {
            crate::engine::SubmitError::Invalid(m) => ApiError::bad_request(m),
            crate::engine::SubmitError::Stopped => ApiError::unavailable("the engine has stopped"),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Input(m) => ApiError::bad_request(m),
            other => ApiError::internal(other.to_string()),
        }
    }
}
