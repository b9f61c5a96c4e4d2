//! XEP-0077 In-Band Registration: creating an account before login (when `[registration] allow`),
//! and, once logged in, changing the password or removing the account.

use minidom::Element;

use super::{IqResult, Module, Spec, Support};
use crate::auth::AccountError;
use crate::error::{StanzaError, StanzaErrorCondition};
use crate::server::ServerState;
use crate::session::SessionCtx;
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "register",
    disco_features: &[ns::REGISTER],
    account_features: &[],
    stream_features: &[],
    specs: &[Spec::xep(
        77,
        "2.4",
        Support::Partial,
        "account creation before login when allowed, password change, account removal; no data forms",
    )],
};

fn child_text(query: &Element, name: &str) -> Option<String> {
    query.get_child(name, ns::REGISTER).map(|e| e.text())
}

fn reply(iq: &Element, outcome: IqResult) -> Element {
    match outcome {
        Ok(payload) => super::result_for(iq, payload),
        Err(error) => error
            .reply_to(iq)
            .unwrap_or_else(|| super::result_for(iq, None)),
    }
}

/// Registration on a stream that has not authenticated yet (XEP-0077 §3.1).
pub async fn handle_unauthenticated(state: &ServerState, iq: &Element) -> Element {
    let Some(query) = iq.get_child("query", ns::REGISTER) else {
        return reply(iq, Err(StanzaErrorCondition::BadRequest.into()));
    };
    let outcome = match iq.attr("type") {
        Some("get") => {
            let mut form = Element::bare("query", ns::REGISTER);
            let mut instructions = Element::bare("instructions", ns::REGISTER);
            instructions.append_text("Choose a user name and password for use with this service.");
            form.append_child(instructions);
            form.append_child(Element::bare("username", ns::REGISTER));
            form.append_child(Element::bare("password", ns::REGISTER));
            Ok(Some(form))
        }
        Some("set") => register(state, query).await,
        _ => Err(StanzaErrorCondition::BadRequest.into()),
    };
    reply(iq, outcome)
}

async fn register(state: &ServerState, query: &Element) -> IqResult {
    let (Some(username), Some(password)) =
        (child_text(query, "username"), child_text(query, "password"))
    else {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            "username and password are required",
        ));
    };
    if username.is_empty() || password.is_empty() {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            "username and password are required",
        ));
    }
    let Some(jid) = state.accounts.jid_for_username(&username) else {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::JidMalformed,
            "the user name is not valid",
        ));
    };
    match state.accounts.create(&jid, &password).await {
        Ok(()) => {
            tracing::info!(user = %jid, "account registered in-band");
            Ok(None)
        }
        Err(err) => Err(account_error(err)),
    }
}

/// Maps an account failure to the XEP-0077 error.
fn account_error(err: AccountError) -> StanzaError {
    match err {
        AccountError::Exists(_) => {
            StanzaError::with_text(StanzaErrorCondition::Conflict, "the user name is taken")
        }
        AccountError::NotFound(_) => StanzaErrorCondition::ItemNotFound.into(),
        AccountError::InvalidJid(_) | AccountError::WrongDomain { .. } => {
            StanzaErrorCondition::JidMalformed.into()
        }
        AccountError::Password(e) => {
            StanzaError::with_text(StanzaErrorCondition::NotAcceptable, e.to_string())
        }
        AccountError::Store(e) => e.into(),
    }
}

/// Registration queries from a logged-in user: status, password change, removal (XEP-0077 §3.2-§3.3).
pub async fn handle(ctx: &SessionCtx, set: bool, query: &Element) -> IqResult {
    let user = ctx.jid.to_bare();
    if !set {
        let mut result = Element::bare("query", ns::REGISTER);
        result.append_child(Element::bare("registered", ns::REGISTER));
        let mut name = Element::bare("username", ns::REGISTER);
        name.append_text(user.node().map(|n| n.as_str()).unwrap_or_default());
        result.append_child(name);
        return Ok(Some(result));
    }
    if query.has_child("remove", ns::REGISTER) {
        ctx.state
            .accounts
            .delete(&user)
            .await
            .map_err(account_error)?;
        tracing::info!(user = %user, "account removed in-band");
        return Ok(None);
    }
    let Some(password) = child_text(query, "password").filter(|p| !p.is_empty()) else {
        // An empty password never replaces the current one (XEP-0077 §3.3).
        return Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            "a new password is required",
        ));
    };
    if let Some(username) = child_text(query, "username") {
        if ctx.state.accounts.jid_for_username(&username).as_ref() != Some(&user) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::NotAuthorized,
                "you can only change your own password",
            ));
        }
    }
    ctx.state
        .accounts
        .set_password(&user, &password)
        .await
        .map_err(account_error)?;
    tracing::info!(user = %user, "password changed in-band");
    Ok(None)
}

/// XEP-0077 §3.2: after the account is removed, every session of it ends with `<not-authorized/>`.
pub async fn after_removal(ctx: &SessionCtx) {
    let user = ctx.jid.to_bare();
    if matches!(ctx.state.accounts.exists(&user), Ok(false)) {
        ctx.state.account_removed(&user);
    }
}
