//! LOGIN and AUTHENTICATE PLAIN, through the throttled [`Authenticator`](crate::server::auth).

use imap_codec::AuthenticateDataCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};

use crate::imap::session::{Reply, Session, State};
use crate::server::auth::Outcome;

pub(super) async fn login(s: &mut Session, user: &str, pass: &str) -> Reply {
    if !s.may_login() {
        return Reply::No("[PRIVACYREQUIRED] use STARTTLS first".into());
    }
    match s.ctx.auth.check(s.peer.addr.ip(), user, pass).await {
        Outcome::Ok => {
            s.peer.set_logged_in();
            if let Err(e) = s.ctx.mailbox.refresh().await {
                tracing::warn!(error = %e, "refresh before IMAP login");
            }
            s.state = State::Authenticated;
            Reply::Ok(format!("[CAPABILITY {}] logged in", s.capabilities()))
        }
        Outcome::Denied => Reply::No("[AUTHENTICATIONFAILED] invalid user name or password".into()),
        Outcome::Throttled => {
            Reply::No("[UNAVAILABLE] too many failed logins from your address; try later".into())
        }
        Outcome::Busy => Reply::No("[UNAVAILABLE] too many logins being checked; try again".into()),
    }
}

pub(super) async fn authenticate(
    s: &mut Session,
    mechanism: &AuthMechanism<'_>,
    initial: Option<Vec<u8>>,
) -> std::io::Result<Reply> {
    if !matches!(mechanism, AuthMechanism::Plain) {
        return Ok(Reply::No(
            "[CANNOT] only AUTHENTICATE PLAIN is supported".into(),
        ));
    }
    if !s.may_login() {
        return Ok(Reply::No("[PRIVACYREQUIRED] use STARTTLS first".into()));
    }
    let data = match initial {
        Some(d) => d,
        None => {
            s.conn.line("+ ");
            s.conn.flush().await?;
            let Some(line) = s.read_raw_line().await? else {
                return Ok(Reply::Close);
            };
            match AuthenticateDataCodec::default().decode(&line) {
                Ok((_, AuthenticateData::Continue(d))) => d.declassify().to_vec(),
                Ok((_, AuthenticateData::Cancel)) => {
                    return Ok(Reply::Bad("AUTHENTICATE cancelled".into()));
                }
                Err(_) => return Ok(Reply::Bad("invalid base64".into())),
            }
        }
    };
    // authzid NUL authcid NUL password
    let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let [authz, user, pass] = parts.as_slice() else {
        return Ok(Reply::Bad("malformed PLAIN response".into()));
    };
    let (Ok(authz), Ok(user), Ok(pass)) = (
        std::str::from_utf8(authz),
        std::str::from_utf8(user),
        std::str::from_utf8(pass),
    ) else {
        return Ok(Reply::Bad("PLAIN response is not UTF-8".into()));
    };
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
        return Ok(Reply::No(
            "[AUTHORIZATIONFAILED] cannot act as another user".into(),
        ));
    }
    Ok(login(s, user, pass).await)
}
