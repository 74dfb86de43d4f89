//! The OpenAPI 3.1 document of the admin API, generated from the handlers' annotations and
//! served at `GET /v1/openapi.json` (without authentication: it describes, it grants
//! nothing).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::resources;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis admin API",
        description = "Policies, roles, principals, assignments, entities and what-if decisions. \
            Errors are RFC 9457 problem+json listing every failing field."
    ),
    paths(
        resources::get_policies,
        resources::put_policies,
        resources::validate_policies,
        resources::list_policy_versions,
        resources::get_policy_version,
        resources::rollback_policies,
        resources::get_schema,
        resources::list_roles,
        resources::create_role,
        resources::get_role,
        resources::update_role,
        resources::delete_role,
        resources::get_principal,
        resources::put_principal,
        resources::delete_principal,
        resources::revoke_session,
        resources::create_assignment,
        resources::list_assignments,
        resources::delete_assignment,
        resources::get_entity,
        resources::put_entity,
        resources::delete_entity,
        resources::authorize,
        resources::authorize_batch,
        resources::list_audit,
        resources::snapshot,
        resources::principal_slice,
        resources::entity_slice,
        resources::updates,
        resources::watch,
        resources::post_events,
        resources::list_dead_letters,
        resources::replay_dead_letter,
        resources::stream_events,
    ),
    modifiers(&AdminToken),
    security(("admin_token" = []))
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An admin token (see `admin.tokens_file`) or, with `admin.jwt`, a \
                             JWT from the configured issuer",
                        ))
                        .build(),
                ),
            );
        }
        // Every authenticated operation can be throttled after failed authentications.
        let throttled = ResponseBuilder::new()
            .description("Too many failed authentications from this client; see `Retry-After`")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .insert(String::from("429"), throttled.clone().into());
            }
        }
    }
}
