//! APPEND (literals, LITERAL+, flags, date) with UIDPLUS's APPENDUID.

use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag as ImapFlag;

use super::{flags_from, no};
use crate::imap::session::{Reply, Session};
use crate::mailbox::NewMessage;

pub(super) async fn append(
    s: &mut Session,
    name: &str,
    flags: &[ImapFlag<'_>],
    date: Option<&DateTime>,
    message: LiteralOrLiteral8<'_>,
) -> Reply {
    let bytes = match message {
        LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
        LiteralOrLiteral8::Literal8(l) => l.data.into_owned(),
    };
    if bytes.is_empty() {
        return Reply::No("[CANNOT] the message is empty".into());
    }
    let Some(folder) = s.ctx.mailbox.folder(name) else {
        return Reply::No(format!("[TRYCREATE] no folder named {name:?}"));
    };
    let internal_date = date.map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        },
        |d| d.as_ref().timestamp(),
    );
    let msg = NewMessage {
        bytes,
        internal_date,
        flags: flags_from(flags),
        recent: false,
        maildir_name: None,
    };
    match s.ctx.mailbox.append(&folder.name, msg).await {
        Ok(m) => {
            // A folder gets its UIDVALIDITY with its first message.
            let validity = s
                .ctx
                .mailbox
                .folder(&folder.name)
                .map_or(folder.uidvalidity, |f| f.uidvalidity);
            Reply::Ok(format!(
                "[APPENDUID {} {}] APPEND completed",
                validity.max(1),
                m.uid
            ))
        }
        Err(e) => no(e),
    }
}
