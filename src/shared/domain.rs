//! Domain types more than one feature speaks: the shipping address an order carries and
//! its e-mails print, and the stock bound the catalogue validates and restocking respects.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::platform::http::error::FieldErrors;

/// Highest stock of one product; restocking never goes past it.
pub const MAX_STOCK: i32 = 1_000_000;

/// `{line1, line2?, city, postalCode, country}`; `country` ISO 3166-1 alpha-2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShippingAddress {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub line2: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub city: String,
    #[schema(
        min_length = 1,
        max_length = 20,
        pattern = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case.
    #[schema(schema_with = country_schema)]
    pub country: String,
}

impl ShippingAddress {
    /// Adds a message per bad field under `prefix` (e.g. `shippingAddress.city`).
    pub fn check(&self, prefix: &str, errors: &mut FieldErrors) {
        let mut bad = |field: &str, message: &str| {
            errors.entry(format!("{prefix}.{field}")).or_default().push(message.to_owned());
        };
        let text = |s: &str, max: usize| !s.trim().is_empty() && s.chars().count() <= max;
        if !text(&self.line1, 200) {
            bad("line1", "must be 1 to 200 characters and not blank");
        }
        if let Some(line2) = &self.line2
            && line2.chars().count() > 200
        {
            bad("line2", "must be at most 200 characters");
        }
        if !text(&self.city, 100) {
            bad("city", "must be 1 to 100 characters and not blank");
        }
        if !text(&self.postal_code, 20) {
            bad("postalCode", "must be 1 to 20 characters and not blank");
        }
        if !is_country_code(&self.country) {
            bad("country", "must be an ISO 3166-1 alpha-2 code such as DE or US");
        }
    }
}

/// Every officially assigned ISO 3166-1 alpha-2 code.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ \
BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET \
FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR \
IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN \
MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY \
QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR \
TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The document's `country`: one of the codes [`is_country_code`] accepts.
fn country_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .description(Some("ISO 3166-1 alpha-2, upper case"))
        .enum_values(Some(COUNTRIES.split(' ')))
        .examples(["DE"])
        .build()
}

pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && COUNTRIES.split(' ').any(|c| c == code)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_field_by_field() {
        let ok = ShippingAddress {
            line1: "1 Main St".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        };
        let mut errors = FieldErrors::new();
        ok.check("shippingAddress", &mut errors);
        assert!(errors.is_empty());
        let bad = ShippingAddress { line1: " ".into(), country: "XX".into(), ..ok };
        bad.check("shippingAddress", &mut errors);
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["shippingAddress.country", "shippingAddress.line1"]);
    }

    #[test]
    fn country_codes() {
        assert!(is_country_code("US") && is_country_code("DE") && is_country_code("ZW"));
        assert!(!is_country_code("us") && !is_country_code("XX") && !is_country_code("USA"));
    }
}
