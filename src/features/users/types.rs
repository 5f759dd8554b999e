//! Request and response bodies of the users endpoints.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::Validate;

use super::repository::{ProfileChanges, UserRow};
use crate::{
    platform::http::{
        error::{AppError, FieldErrors},
        extract::double_option,
    },
    shared::auth::Role,
};

/// A user as every endpoint shows it (never with a password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserResponse {
    pub id: Uuid,
    #[schema(min_length = 3, max_length = 254)]
    pub email: String,
    #[schema(min_length = 1, max_length = 100)]
    pub first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    pub last_name: Option<String>,
    #[schema(max_length = 16, pattern = r"^\+?[1-9][0-9]{1,14}$")]
    pub phone: Option<String>,
    pub role: Role,
    /// Whether the account confirmed its address through the link it was mailed.
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserRow> for UserResponse {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            email: u.email,
            first_name: u.first_name,
            last_name: u.last_name,
            phone: u.phone,
            role: u.role,
            email_verified: u.email_verified_at.is_some(),
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// `PATCH /users/profile`: absent = unchanged, `null` = cleared. Any other field is a 400.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProfileRequest {
    /// 1..=100 characters, not blank, or null to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, min_length = 1, max_length = 100, pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]")]
    pub first_name: Option<Option<String>>,
    /// 1..=100 characters, not blank, or null to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, min_length = 1, max_length = 100, pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]")]
    pub last_name: Option<Option<String>>,
    /// E.164, e.g. `+14155550123`, or null to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 16, pattern = r"^\+?[1-9][0-9]{1,14}$")]
    pub phone: Option<Option<String>>,
}

impl UpdateProfileRequest {
    /// Checks every present value, listing all bad fields at once.
    pub fn into_changes(self) -> Result<ProfileChanges, AppError> {
        let mut errors = FieldErrors::new();
        check_name("firstName", self.first_name.as_ref(), &mut errors);
        check_name("lastName", self.last_name.as_ref(), &mut errors);
        if let Some(Some(phone)) = &self.phone
            && !is_e164(phone)
        {
            errors.insert("phone".into(), vec!["must be an E.164 phone number such as +14155550123".into()]);
        }
        if !errors.is_empty() {
            return Err(AppError::invalid_fields(errors));
        }
        Ok(ProfileChanges { first_name: self.first_name, last_name: self.last_name, phone: self.phone })
    }
}

fn check_name(field: &str, value: Option<&Option<String>>, errors: &mut FieldErrors) {
    if let Some(Some(name)) = value
        && !is_valid_name(name)
    {
        errors.insert(field.into(), vec!["must be 1 to 100 characters and not blank".into()]);
    }
}

/// Names: 1..=100 characters, not only whitespace.
pub fn is_valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 100
}

/// `^\+?[1-9]\d{1,14}$`
pub fn is_e164(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// `POST /users/profile/password`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[validate(length(min = 1, max = 128, message = "is required"))]
    #[schema(min_length = 1, max_length = 128)]
    pub current_password: String,
    /// 8..=128 characters.
    #[validate(length(min = 8, max = 128, message = "must be 8 to 128 characters"))]
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

/// `PATCH /users/{id}` (admin): the role, and the profile fields with profile semantics.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminUpdateUserRequest {
    pub role: Option<Role>,
    /// 1..=100 characters, not blank, or null to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, min_length = 1, max_length = 100, pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]")]
    pub first_name: Option<Option<String>>,
    /// 1..=100 characters, not blank, or null to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, min_length = 1, max_length = 100, pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]")]
    pub last_name: Option<Option<String>>,
    /// E.164, e.g. `+14155550123`, or null to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 16, pattern = r"^\+?[1-9][0-9]{1,14}$")]
    pub phone: Option<Option<String>>,
}

/// Filters of `GET /users`.
#[derive(Debug, Deserialize, Validate, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserFilter {
    /// Case-insensitive match on e-mail, first and last name. The total counts at most
    /// 1000 matches (`pagination.totalCapped`).
    #[validate(length(min = 1, max = 100, message = "must be 1 to 100 characters"))]
    #[param(min_length = 1, max_length = 100)]
    pub q: Option<String>,
    /// Only users with this role.
    pub role: Option<Role>,
}

/// Path parameter `{id}`.
#[derive(Debug, Deserialize)]
pub struct UserIdPath {
    pub id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        for ok in ["+14155550123", "14155550123", "+12", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["", "+", "+0123", "+1", "+1234567890123456", "+1 415 555", "phone"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn profile_changes_list_every_bad_field() {
        let req = UpdateProfileRequest {
            first_name: Some(Some("  ".into())),
            last_name: Some(Some("x".repeat(101))),
            phone: Some(Some("12-34".into())),
        };
        match req.into_changes().unwrap_err() {
            AppError::Validation { fields, .. } => {
                assert_eq!(fields.keys().collect::<Vec<_>>(), ["firstName", "lastName", "phone"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absent_and_null_differ() {
        let req: UpdateProfileRequest = serde_json::from_str(r#"{"firstName": null}"#).unwrap();
        assert_eq!(req.first_name, Some(None));
        assert_eq!(req.last_name, None);
    }
}
