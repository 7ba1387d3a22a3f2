// SPDX-License-Identifier: Apache-2.0
/* The ABI header keeps its hand-aligned layout (multi-line comments after macros, tables). */
/* clang-format off */
/*
 * asiosmtpd/plugin.h - the plugin C ABI of asiosmtpd, major version 1.
 *
 * The only header a plugin includes. Plain C99: fixed-width integers, pointer+length strings,
 * opaque handles, function pointers. No C++ types, no exceptions, no allocator ownership
 * crosses this boundary. A plugin never links against the host: the host hands it a table of
 * functions (asiosmtpd_host_api) when it creates an instance.
 *
 * Compatibility rules (ABI 1.x):
 *  - Every struct that crosses the boundary starts with `uint32_t struct_size`. Fields are only
 *    ever appended, in blocks marked "ABI 1.N and later". The reader checks the writer's size
 *    (ASIOSMTPD_HAS) before reading a field added after 1.0.
 *  - Constants are #defines of fixed-width integers, never C enum types.
 *  - A function whose meaning must change gets a new `_v2` name; nothing changes signature.
 *
 * Threading rules (normative):
 *  T1 create() and destroy() run on the host's control thread, never concurrently with a hook
 *     of the same instance.
 *  T2 Hooks of one session run one at a time, in order, but consecutive hooks may run on
 *     different OS threads: never keep per-session state in thread_local storage.
 *  T3 Hooks of different sessions run concurrently on the host's worker threads when the
 *     plugin declares ASIOSMTPD_PF_THREAD_SAFE; otherwise the host serialises every hook call
 *     into that instance with a lock.
 *  T4 Hooks must not block. A hook that must wait (DNS, an upstream server, a disk fsync on a
 *     slow device) calls suspend(), returns ASIOSMTPD_PENDING and later calls complete() from
 *     any thread. A hook that does not complete within the instance's timeout costs its session
 *     a "451 4.3.0 Error: internal" reply; the server goes on. A hook that blocks anyway holds
 *     an event-loop thread (every session that thread serves waits); the host cannot take the
 *     thread back, but logs "event=plugin_blocking" once the call has run for 500 ms.
 *  T5 A asiosmtpd_call pointer is valid only during the hook call that received it. Functions
 *     that may be called from any thread at any time: complete(), log().
 *  T6 The host never calls back into a plugin from inside a host API function.
 *  T7 destroy() must stop and join every thread the plugin started; the library may be
 *     unloaded right after it returns.
 */
#ifndef ASIOSMTPD_PLUGIN_H
#define ASIOSMTPD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define ASIOSMTPD_ABI_MAJOR 1u /* a breaking change gets a new entry symbol name */
#define ASIOSMTPD_ABI_MINOR 3u /* additive changes only; 1.1: STARTTLS and AUTH, TLS session info;
                                  1.2: DATA_CHUNK (the message in pieces, as it arrives);
                                  1.3: message editing, TXN_END, config error reports
                                  (cfg_error) and check runs (is_check_only) */

#if defined(_WIN32)
#define ASIOSMTPD_EXPORT __declspec(dllexport)
#else
#define ASIOSMTPD_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Vocabulary
 * ---------------------------------------------------------------------------------------- */

/* A string: pointer and length, not necessarily NUL-terminated. Host-to-plugin strings are
 * borrowed: valid until the hook (or create()) that received them returns, unless a function
 * says otherwise. `data` is never NULL in strings the host gives out (size may be 0). */
typedef struct asiosmtpd_str {
    const char *data;
    size_t size;
} asiosmtpd_str;

/* Result of host API functions. */
typedef int32_t asiosmtpd_status;
#define ASIOSMTPD_OK 0
#define ASIOSMTPD_E_INVALID (-1)     /* bad argument (NULL, malformed reply, out of range) */
#define ASIOSMTPD_E_UNSUPPORTED (-2) /* unknown hook id, flag or feature */
#define ASIOSMTPD_E_STATE (-3)       /* not allowed in this hook or phase */
#define ASIOSMTPD_E_GONE (-4)        /* session closed, hook timed out, token stale or reused */
#define ASIOSMTPD_E_CONFLICT (-5)    /* verb already registered by another plugin or built in */
#define ASIOSMTPD_E_FROZEN (-6)      /* registration outside create() */

/* What a hook returns. */
typedef int32_t asiosmtpd_verdict;
#define ASIOSMTPD_CONTINUE 0       /* no opinion: the next plugin runs, then the host default */
#define ASIOSMTPD_ACCEPT 1         /* accept; stops the chain. Reply: set_reply() or default */
#define ASIOSMTPD_REJECT 2         /* permanent failure (5xx); stops the chain */
#define ASIOSMTPD_TEMPFAIL 3       /* temporary failure (4xx); stops the chain */
#define ASIOSMTPD_REJECT_CLOSE 4   /* 5xx reply, then the host closes the connection */
#define ASIOSMTPD_TEMPFAIL_CLOSE 5 /* 4xx reply (default 421), then close */
#define ASIOSMTPD_PENDING 6        /* suspended: the verdict comes later through complete() */
/* ---- ABI 1.1 and later ---- */
#define ASIOSMTPD_AUTH_CHALLENGE 7 /* AUTH mechanisms only: send "334 <base64 of the challenge set with
                                      set_auth_challenge()>" and call the mechanism again with the
                                      client's answer. Through complete(), the challenge bytes are
                                      the `text` argument (code 0). */

/* Hook identifiers. The hook's `args` pointer points to the struct named here. */
typedef int32_t asiosmtpd_hook_id;
#define ASIOSMTPD_HOOK_CONNECT 1       /* before the 220 greeting     args: asiosmtpd_connect_args */
#define ASIOSMTPD_HOOK_HELO 2          /* HELO hostname               args: asiosmtpd_helo_args */
#define ASIOSMTPD_HOOK_EHLO 3          /* EHLO/LHLO hostname          args: asiosmtpd_helo_args */
#define ASIOSMTPD_HOOK_MAIL 4          /* MAIL FROM, after syntax     args: asiosmtpd_address_args */
#define ASIOSMTPD_HOOK_RCPT 5          /* RCPT TO, after syntax       args: asiosmtpd_address_args */
#define ASIOSMTPD_HOOK_DATA 6          /* whole message received      args: asiosmtpd_data_args */
#define ASIOSMTPD_HOOK_RSET 7          /* RSET, envelope already reset args: NULL */
#define ASIOSMTPD_HOOK_NOOP 8          /* NOOP [arg]                  args: asiosmtpd_command_args */
#define ASIOSMTPD_HOOK_QUIT 9          /* QUIT; the host closes after args: NULL */
#define ASIOSMTPD_HOOK_VRFY 10         /* VRFY address                args: asiosmtpd_address_args */
#define ASIOSMTPD_HOOK_UNKNOWN 11      /* a verb nobody knows         args: asiosmtpd_command_args */
#define ASIOSMTPD_HOOK_SESSION_CLOSE 12 /* notification, always once   args: NULL; verdict ignored */
/* ---- ABI 1.1 and later ---- */
#define ASIOSMTPD_HOOK_STARTTLS 13     /* after a STARTTLS handshake   args: NULL; see below */
#define ASIOSMTPD_HOOK_AUTH_CHECK 14   /* AUTH PLAIN/LOGIN credentials args: asiosmtpd_auth_args */
#define ASIOSMTPD_HOOK_PROXY 15        /* PROXY header, before TLS/greeting args: asiosmtpd_proxy_args */
/* ---- ABI 1.2 and later ---- */
#define ASIOSMTPD_HOOK_DATA_CHUNK 16   /* the next piece of the message  args: asiosmtpd_data_args */
/* ---- ABI 1.3 and later ---- */
#define ASIOSMTPD_HOOK_TXN_END 17      /* notification, once per transaction args: asiosmtpd_txn_end_args;
                                          verdict ignored, no suspend() */

/* DATA_CHUNK (1.2): streaming, so that a message need not sit whole in memory (aiosmtpd #293).
 * While the body arrives, the host calls DATA_CHUNK with consecutive pieces of the unstuffed
 * message (the same bytes, in order, as DATA's `content`), each at least 64 KiB but the last;
 * the last carries ASIOSMTPD_DATA_LAST_CHUNK (and may be empty). Then the DATA hook runs as
 * usual and gives the verdict and the reply. The chunk's bytes are valid during the call
 * only: copy what you keep (also before suspend()).
 *   - A plugin that registers DATA_CHUNK gets its DATA hook with content NULL, size 0 and
 *     ASIOSMTPD_DATA_STREAMED, unless some other plugin's DATA hook needs the whole message
 *     (it registered DATA without DATA_CHUNK); then everybody's DATA gets the whole message.
 *     `message_size` always holds the message's size.
 *   - CONTINUE or ACCEPT: go on. PENDING: the host reads nothing more from the client until
 *     complete() (backpressure: a slow store bounds the memory, not the client).
 *   - REJECT / TEMPFAIL (any form), or a plugin error: the message is refused. The rest is
 *     read and dropped, no more chunks and no DATA hook run, and the final dot is answered
 *     with that reply (451 4.3.0 for an error); the *_CLOSE forms close after it.
 *   - A message over data_size_limit or with an overlong line stops the chunks and gets
 *     aiosmtpd's 552/500 reply without DATA. Keep per-message state in a transaction slot
 *     (set_data with a dtor): the host destroys it when the transaction ends, however. */

/* Message editing (1.3): a plugin that declared itself an editor (declare_editor() in create())
 * may change the transaction from its DATA hook, with edit_message() during the call, or with
 * edit_message_pending() from any thread while the call is suspended (before complete()).
 *   - Who sees what: the plugins after the editor in the DATA chain (config order), and so the
 *     delivering plugin, see the edited message in their `content` (or chunks, below) and the
 *     edited envelope through txn_info(), txn_rcpt_at(), txn_mail_param_at() and
 *     txn_rcpt_param_at(). The editor itself, the plugins before it, the client's reply and the
 *     host's mail log see the message and envelope as the client sent them.
 *   - When: an editor's edits take effect when its call ends with CONTINUE or ACCEPT (ACCEPT
 *     ends the chain, so nobody sees them but TXN_END's size). A refusal or a plugin error
 *     drops them. Each edit is checked when it is made (E_INVALID: nothing recorded).
 *   - DATA_CHUNK and editors: a DATA_CHUNK plugin configured before the first editor (or the
 *     editor itself) gets its pieces live, as the message arrives. One configured after it
 *     cannot: its pieces would miss the edits. It gets the whole message, as edited by the
 *     plugins before it, in pieces right before its own DATA hook (at least 64 KiB each but the
 *     last, LAST_CHUNK on the last; a refusal refuses the message). While the editors run, the
 *     host holds the message: in memory up to server.spool_threshold bytes, above that in an
 *     unlinked file in server.spool_directory, so memory per session stays bounded.
 *   - Headers: a field is `name: value`; `name` is printable ASCII without ':' (1..200 bytes);
 *     `value` is the field body (the host puts one space after the colon unless the value
 *     starts with SP or HT); a line break inside it ("\n" or "\r\n") must be followed by SP
 *     or HT (folding; the host writes CRLF); no NUL, no bare CR; at most 64 KiB.
 *     Occurrences (`index` of CHANGE and DELETE) count the fields of that name, matched
 *     case-insensitively, from 1, in the message as the plugin's call left it so far.
 *   - Body: the first REPLACE_BODY of a call starts a new body, each further one in the same
 *     call appends to it (a milter sends it in pieces); bytes as they are (CRLF line ends).
 *   - Envelope: addresses as MAIL/RCPT give them ("<>" for the null sender), without angle
 *     brackets otherwise; params "KEY=VALUE" strings. ADD_RCPT of a recipient present already
 *     replaces its params; DELETE_RCPT of an absent one is E_INVALID. On LMTP listeners
 *     recipients cannot be edited (E_STATE): each has its own reply to the client. */

/* Verdicts and replies per hook, when no plugin sets a reply (aiosmtpd's defaults):
 *   CONNECT  CONTINUE/ACCEPT: the 220 greeting; REJECT: 554 and only QUIT served;
 *            TEMPFAIL* and REJECT_CLOSE: 421 and close. A plugin error (unknown verdict,
 *            refused reply, timeout, ...) is always 421 and close, not the 451 of other hooks.
 *   HELO     250 <hostname>           EHLO  the keyword lines      MAIL/RCPT 250 OK
 *   DATA     250 OK                   RSET  250 OK                 NOOP 250 OK
 *   QUIT     221 Bye                  VRFY  252 Cannot VRFY user, but will accept ...
 *   UNKNOWN  500 Error: command "X" not recognized (and the unknown-command budget is used)
 *   AUTH_CHECK (1.1) ACCEPT: "235 2.7.0 Authentication successful", the session is authenticated
 *            as the login (or the identity given with set_auth_identity()); REJECT, or CONTINUE
 *            from every plugin: "535 5.7.8 Authentication credentials invalid" (always that
 *            text); TEMPFAIL: "454 4.7.0 Temporary authentication failure".
 *   PROXY    (1.1) runs on listeners with proxy_protocol: true, after the header was read and
 *            before the greeting (and before an implicit-TLS handshake). REJECT/TEMPFAIL (any
 *            form) closes the connection without a reply (aiosmtpd); no hook: accepted.
 *   STARTTLS (1.1) no reply is sent; REJECT or TEMPFAIL makes every later command but QUIT
 *            answer "554 Command refused due to lack of security" (aiosmtpd handle_STARTTLS
 *            returning false); the *_CLOSE verdicts close (with their reply, if set).
 * A REJECT/TEMPFAIL without a reply gets "550 5.7.1 Rejected" / "451 4.7.1 Try again later".
 * ACCEPT and CONTINUE apply the host's state change (HELO name stored, sender stored,
 * recipient added, message taken); REJECT and TEMPFAIL do not. For DATA, the message counts as
 * delivered only when some plugin ACCEPTs it or every plugin CONTINUEs. */

/* ------------------------------------------------------------------------------------------
 * Opaque handles, all owned by the host
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_ctx asiosmtpd_ctx;             /* one per plugin instance; lives as long */
typedef struct asiosmtpd_registrar asiosmtpd_registrar; /* valid only during create() */
typedef struct asiosmtpd_call asiosmtpd_call;           /* valid only during one hook call */
typedef struct asiosmtpd_cfg asiosmtpd_cfg;             /* config node; valid only during create() */
typedef uint64_t asiosmtpd_token;                       /* a suspended hook call; 0 = none */

/* True when the struct at p, whose writer stored its size in struct_size, holds field f. */
#ifdef __cplusplus
#define ASIOSMTPD_HAS(p, T, f) \
    ((p)->struct_size >= offsetof(T, f) + sizeof(static_cast<const T *>(nullptr)->f))
#else
#define ASIOSMTPD_HAS(p, T, f) ((p)->struct_size >= offsetof(T, f) + sizeof(((const T *)0)->f))
#endif

/* ------------------------------------------------------------------------------------------
 * Hook arguments: host-allocated, valid until the hook returns. A suspended call must copy
 * what its worker needs before returning PENDING: when the call times out (or the session
 * ends) the host goes on and frees them, while the worker may still run.
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_connect_args {
    uint32_t struct_size;
    asiosmtpd_str peer_address; /* "127.0.0.1", "::1" */
    uint16_t peer_port;
    asiosmtpd_str local_address;
    uint16_t local_port;
} asiosmtpd_connect_args;

typedef struct asiosmtpd_helo_args {
    uint32_t struct_size;
    asiosmtpd_str hostname; /* the whole argument, as the client sent it (spaces included) */
} asiosmtpd_helo_args;

typedef struct asiosmtpd_address_args {
    uint32_t struct_size;
    asiosmtpd_str address;        /* normalised as aiosmtpd stores it: without the angle brackets
                                     and without a source route (@a,@b:), comments and folding
                                     whitespace removed, quoting kept where needed, case kept
                                     ("Bob@Example.ORG" stays so); "<>" for the null reverse path */
    const asiosmtpd_str *params;  /* MAIL, RCPT: the ESMTP parameters, upper-cased ("SIZE=100");
                                     RCPT has some only with server.enable_dsn (NOTIFY, ORCPT);
                                     ENVID and ORCPT values keep their case (xtext) */
    size_t param_count;
} asiosmtpd_address_args;

#define ASIOSMTPD_DATA_DOT_UNSTUFFED 0x1u /* RFC 5321 4.5.2 transparency removed */
#define ASIOSMTPD_DATA_CRLF 0x2u          /* lines end in CRLF as received; bare CR/LF kept */
/* ABI 1.1: server.decode_data is on, and the content passed aiosmtpd's decoding: strict ASCII
 * (a non-ASCII message was answered "500 Error: strict ASCII mode" and never reaches plugins),
 * or with enable_smtputf8 UTF-8 where invalid bytes are kept as they came (aiosmtpd's
 * surrogateescape). A plugin wanting aiosmtpd's `envelope.content` text decodes it as such;
 * the bytes are always `original_content`. */
#define ASIOSMTPD_DATA_DECODED 0x4u
#define ASIOSMTPD_DATA_UTF8 0x8u          /* with DECODED: the text is UTF-8 (SMTPUTF8), not ASCII */
/* ABI 1.2 (see DATA_CHUNK above) */
#define ASIOSMTPD_DATA_STREAMED 0x10u     /* DATA: the message went to DATA_CHUNK; content is NULL */
#define ASIOSMTPD_DATA_LAST_CHUNK 0x20u   /* DATA_CHUNK: the final piece; DATA comes next */
typedef struct asiosmtpd_data_args {
    uint32_t struct_size;
    const uint8_t *content; /* DATA: the message as aiosmtpd's envelope.original_content;
                               DATA_CHUNK: the next piece of it */
    size_t size;
    uint32_t flags;         /* ASIOSMTPD_DATA_* */
    /* ---- ABI 1.2 and later ---- */
    uint64_t message_size;  /* DATA: the whole message's size (also when STREAMED);
                               DATA_CHUNK: bytes so far, this piece included */
} asiosmtpd_data_args;

/* ABI 1.1: AUTH_CHECK (built-in PLAIN and LOGIN) and plugin mechanisms. Credentials are raw
 * bytes as the client sent them (base64-decoded); never log the password. */
typedef struct asiosmtpd_auth_args {
    uint32_t struct_size;
    asiosmtpd_str mechanism; /* "PLAIN", "LOGIN", or the plugin's mechanism (upper case) */
    asiosmtpd_str authzid;   /* PLAIN's authorization identity; empty otherwise */
    asiosmtpd_str login;     /* AUTH_CHECK: the user name */
    asiosmtpd_str password;  /* AUTH_CHECK: the password */
    asiosmtpd_str response;  /* mechanisms: the client's decoded answer (initial response first) */
    int32_t has_response;    /* mechanisms: 0 on the first call when AUTH had no initial response */
    uint32_t step;           /* mechanisms: 0 for the first call, then 1, 2, ... */
} asiosmtpd_auth_args;

/* ABI 1.1: the HAProxy PROXY protocol header (v1 or v2). The session's peer address (in
 * session_info and logs) is the client named here when the header carries one. */
typedef struct asiosmtpd_proxy_args {
    uint32_t struct_size;
    int32_t version;           /* 1 or 2 */
    int32_t command;           /* v2: 0 LOCAL, 1 PROXY; v1: 1 */
    int32_t family;            /* 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX */
    int32_t protocol;          /* 0 UNSPEC, 1 STREAM, 2 DGRAM */
    asiosmtpd_str src_address; /* empty when the header carries none */
    uint16_t src_port;
    asiosmtpd_str dst_address;
    uint16_t dst_port;
    asiosmtpd_str tlvs;        /* v2: the raw TLV bytes (type, 16-bit length, value)... */
    asiosmtpd_str proxy_address; /* the load balancer's address (the TCP peer) */
} asiosmtpd_proxy_args;

typedef struct asiosmtpd_command_args {
    uint32_t struct_size;
    asiosmtpd_str verb;     /* upper-cased */
    asiosmtpd_str argument; /* stripped; empty when absent */
    int32_t has_argument;   /* 0 when nothing followed the verb (aiosmtpd's arg=None) */
} asiosmtpd_command_args;

/* ABI 1.3: TXN_END, once per transaction (MAIL accepted), after its end was decided: the
 * message's reply chosen (ACCEPTED: 2xx; REFUSED: 4xx/5xx, also the host's own 552/500 and the
 * refusal of a DATA_CHUNK plugin), or no message (ABORTED: RSET, HELO/EHLO, STARTTLS, QUIT,
 * the client leaving, a timeout, a shutdown). The transaction's slots are still there during
 * the call and freed right after it; txn_info() answers E_STATE (the envelope is gone: the
 * arguments carry what is left of it). */
#define ASIOSMTPD_TXN_ACCEPTED 1
#define ASIOSMTPD_TXN_REFUSED 2
#define ASIOSMTPD_TXN_ABORTED 3
typedef struct asiosmtpd_txn_end_args {
    uint32_t struct_size;
    int32_t outcome;          /* ASIOSMTPD_TXN_* */
    uint16_t code;            /* the message's reply code (LMTP: the first); 0 when ABORTED */
    asiosmtpd_str reply;      /* its first line, as sent; empty when ABORTED */
    asiosmtpd_str reason;     /* ABORTED: "rset", "helo", "ehlo", "starttls", "quit",
                                 "disconnect", "timeout", "shutdown", "closed"; empty otherwise */
    asiosmtpd_str mail_from;  /* as the client gave it; "<>" for the null sender */
    size_t rcpt_count;        /* the client's accepted recipients */
    uint64_t size;            /* the message's bytes as received (the mail log's size=); 0 when
                                 there was none */
} asiosmtpd_txn_end_args;

/* ABI 1.3: one change to the transaction (see "Message editing" above). */
#define ASIOSMTPD_EDIT_ADD_HEADER 1    /* name, value: after the last field of the header block */
#define ASIOSMTPD_EDIT_INSERT_HEADER 2 /* name, value, index: before the index-th field of the block
                                          (0 = at the top; past the end = after the last) */
#define ASIOSMTPD_EDIT_CHANGE_HEADER 3 /* name, value, index: the index-th field named `name` gets
                                          this value; no such field: added after the last (Postfix) */
#define ASIOSMTPD_EDIT_DELETE_HEADER 4 /* name, index: the index-th field named `name` goes; none: no-op */
#define ASIOSMTPD_EDIT_REPLACE_BODY 5  /* value: the next piece of the new body */
#define ASIOSMTPD_EDIT_CHANGE_SENDER 6 /* name: the new reverse path; params: its ESMTP parameters */
#define ASIOSMTPD_EDIT_ADD_RCPT 7      /* name: the recipient; params: its ESMTP parameters */
#define ASIOSMTPD_EDIT_DELETE_RCPT 8   /* name: the recipient (compared case-insensitively) */
typedef struct asiosmtpd_edit {
    uint32_t struct_size;
    int32_t op;                  /* ASIOSMTPD_EDIT_* */
    asiosmtpd_str name;          /* header name or address */
    asiosmtpd_str value;         /* header value or body piece */
    size_t index;                /* INSERT: position; CHANGE/DELETE: occurrence, from 1 */
    const asiosmtpd_str *params; /* CHANGE_SENDER, ADD_RCPT: "KEY=VALUE"; may be NULL if none */
    size_t param_count;
} asiosmtpd_edit;

/* A hook. `instance` is what create() stored in *out_instance. */
typedef asiosmtpd_verdict (*asiosmtpd_hook_fn)(void *instance, asiosmtpd_call *call,
                                                const void *args);

/* ------------------------------------------------------------------------------------------
 * Registration descriptors (used during create() only; the host copies what it keeps)
 * ---------------------------------------------------------------------------------------- */

/* A new SMTP command, aiosmtpd's smtp_<VERB>. The verb takes part in the command-line limit,
 * command_call_limit, require_starttls and HELP exactly like a built-in verb. */
#define ASIOSMTPD_CMD_NEEDS_HELO 0x1u /* "503 Error: send HELO first" until HELO/EHLO */
typedef struct asiosmtpd_command_desc {
    uint32_t struct_size;
    asiosmtpd_str verb;    /* [A-Z0-9-]+, matched case-insensitively; not a built-in verb */
    asiosmtpd_str help;    /* "PING [text]": listed by HELP, shown by HELP <verb>; may be empty */
    uint32_t flags;        /* ASIOSMTPD_CMD_* */
    asiosmtpd_hook_fn handler; /* args: asiosmtpd_command_args; default reply "250 OK" */
} asiosmtpd_command_desc;

/* ------------------------------------------------------------------------------------------
 * Read-only views. The caller sets struct_size to its capacity; the host fills what both
 * know and sets struct_size to what it wrote.
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_session_info {
    uint32_t struct_size;
    uint64_t session_id;
    asiosmtpd_str peer_address;
    uint16_t peer_port;
    asiosmtpd_str helo_name; /* empty before HELO/EHLO */
    int32_t extended_smtp;   /* 1 after EHLO/LHLO */
    int32_t tls_active;      /* STARTTLS done, or an implicit-TLS listener */
    int32_t authenticated;   /* AUTH succeeded in this session */
    /* ---- ABI 1.1 and later ---- */
    asiosmtpd_str tls_version;      /* "TLSv1.3"; empty without TLS */
    asiosmtpd_str tls_cipher;       /* "TLS_AES_256_GCM_SHA384" */
    asiosmtpd_str tls_peer_subject; /* client certificate subject (RFC 2253); empty if none */
    asiosmtpd_str auth_login;       /* the authenticated identity; empty before AUTH succeeded */
} asiosmtpd_session_info;

typedef struct asiosmtpd_txn_info {
    uint32_t struct_size;
    asiosmtpd_str mail_from; /* empty before MAIL; "<>" for the null sender */
    size_t mail_param_count;
    size_t rcpt_count;
} asiosmtpd_txn_info;

#define ASIOSMTPD_SCOPE_SESSION 1 /* freed when the session ends */
#define ASIOSMTPD_SCOPE_TXN 2     /* freed when the transaction ends (RSET, HELO, end of DATA) */

#define ASIOSMTPD_LOG_DEBUG 1
#define ASIOSMTPD_LOG_INFO 2
#define ASIOSMTPD_LOG_WARN 3
#define ASIOSMTPD_LOG_ERROR 4

#define ASIOSMTPD_CFG_NULL 0
#define ASIOSMTPD_CFG_SCALAR 1
#define ASIOSMTPD_CFG_SEQUENCE 2
#define ASIOSMTPD_CFG_MAP 3

/* ------------------------------------------------------------------------------------------
 * The host API: an append-only function table. The host never leaves a member NULL.
 * ---------------------------------------------------------------------------------------- */
typedef struct asiosmtpd_host_api {
    uint32_t struct_size;
    uint32_t abi_major, abi_minor;
    asiosmtpd_str host_version; /* "0.1.0"; informative */

    /* -- Registration: only inside create(); afterwards ASIOSMTPD_E_FROZEN. -- */

    /* Add fn to the chain of `hook`. Chains run in config order. Returns ASIOSMTPD_OK,
     * ASIOSMTPD_E_UNSUPPORTED (unknown hook id: a plugin may degrade), ASIOSMTPD_E_INVALID. */
    asiosmtpd_status (*register_hook)(asiosmtpd_registrar *reg, asiosmtpd_hook_id hook,
                                      asiosmtpd_hook_fn fn);
    /* Add a command. ASIOSMTPD_E_CONFLICT if the verb is built in or taken; E_INVALID on a bad
     * verb. The descriptor and its strings are copied. */
    asiosmtpd_status (*register_command)(asiosmtpd_registrar *reg,
                                         const asiosmtpd_command_desc *desc);
    /* Add an EHLO keyword line (e.g. "XCLIENT NAME ADDR"), sent after the built-in keywords
     * and before "250 HELP" (aiosmtpd's ehlo_hook). Copied. E_INVALID on CR/LF or > 500 bytes. */
    asiosmtpd_status (*register_ehlo_keyword)(asiosmtpd_registrar *reg, asiosmtpd_str line);

    /* -- Configuration: this instance's `config:` subtree; nodes valid during create(). -- */
    const asiosmtpd_cfg *(*cfg_root)(asiosmtpd_registrar *reg); /* never NULL (NULL kind if absent) */
    int32_t (*cfg_kind)(const asiosmtpd_cfg *node);            /* ASIOSMTPD_CFG_* */
    asiosmtpd_str (*cfg_scalar)(const asiosmtpd_cfg *node);    /* raw text; empty unless scalar */
    size_t (*cfg_size)(const asiosmtpd_cfg *node);             /* entries of a sequence or map */
    const asiosmtpd_cfg *(*cfg_at)(const asiosmtpd_cfg *node, size_t index); /* NULL if out of range */
    asiosmtpd_str (*cfg_key_at)(const asiosmtpd_cfg *node, size_t index);    /* map keys, in order */
    const asiosmtpd_cfg *(*cfg_get)(const asiosmtpd_cfg *node, asiosmtpd_str key); /* NULL if absent */

    /* -- Session and transaction views: only with the call of the running hook. -- */
    asiosmtpd_status (*session_info)(asiosmtpd_call *call, asiosmtpd_session_info *inout);
    asiosmtpd_status (*txn_info)(asiosmtpd_call *call, asiosmtpd_txn_info *inout);
    /* The index-th accepted recipient, or the index-th MAIL parameter. Borrowed until the hook
     * returns. E_INVALID when out of range. */
    asiosmtpd_status (*txn_rcpt_at)(asiosmtpd_call *call, size_t index, asiosmtpd_str *out);
    asiosmtpd_status (*txn_mail_param_at)(asiosmtpd_call *call, size_t index, asiosmtpd_str *out);

    /* The reply for this hook's verdict. `code` 200..599; `text` may hold '\n' between lines,
     * which the host sends as a multi-line reply (code-text ... code text). The class must fit
     * the verdict (2xx/3xx ACCEPT, 4xx TEMPFAIL*, 5xx REJECT*; CONTINUE ignores the reply),
     * else the host logs and answers 451 4.3.0. Copied. E_INVALID on a code outside 200..599,
     * on CR, NUL or another control byte but HT in the text, a line over 506 bytes or a text
     * over 65536 bytes (RFC 5321 textstring; bytes >= 0x80 pass, RFC 6531). A refused reply
     * changes nothing, but unless a later set_reply() succeeds the hook's verdict (anything but
     * PENDING) costs the session 451 4.3.0 and a log line, not the verdict's default reply. */
    asiosmtpd_status (*set_reply)(asiosmtpd_call *call, uint16_t code, asiosmtpd_str text);

    /* Private data: one slot per instance and scope. The host calls dtor(data) (if not NULL)
     * when the scope ends or the slot is replaced, on the session's thread. */
    asiosmtpd_status (*slot_set)(asiosmtpd_call *call, int32_t scope, void *data,
                                 void (*dtor)(void *data));
    void *(*slot_get)(asiosmtpd_call *call, int32_t scope);

    /* Suspend the running hook: *out receives a token, the hook returns ASIOSMTPD_PENDING, and
     * the session waits (no further pipelined command runs) until complete(). */
    asiosmtpd_status (*suspend)(asiosmtpd_call *call, asiosmtpd_token *out);
    /* Finish a suspended hook, from ANY thread, exactly once per token. code 0 = no reply set
     * (the verdict's default; `text` is then ignored). Returns ASIOSMTPD_E_GONE when the session
     * ended, the hook timed out or the token was completed already (harmless; nothing changes),
     * E_INVALID for a verdict of PENDING (the token stays valid) or an unknown token. An unknown
     * verdict, a reply set_reply() would refuse, a reply class not fitting the verdict, or an
     * AUTH_CHALLENGE over 700 bytes also answer E_INVALID, and the call ends at once as a plugin
     * error (451 4.3.0 and a log line; do not complete the token again); so does a DATA call
     * with a refused per-recipient reply left (set_rcpt_reply). Strings are copied. */
    asiosmtpd_status (*complete)(asiosmtpd_token token, asiosmtpd_verdict verdict, uint16_t code,
                                 asiosmtpd_str text);

    /* One log line; thread-safe. call may be NULL (outside hooks); the host adds the plugin
     * instance name and the session id. Never log passwords or message bodies. */
    void (*log)(asiosmtpd_ctx *ctx, asiosmtpd_call *call, int32_t level, asiosmtpd_str message);

    /* ---- ABI 1.1 and later ---- */

    /* Add an AUTH mechanism (RFC 4954), aiosmtpd's auth_<MECH>: `name` [A-Z0-9_-]+ (matched
     * case-insensitively; not PLAIN or LOGIN), advertised in the EHLO AUTH line. `fn` gets
     * asiosmtpd_auth_args and returns ASIOSMTPD_AUTH_CHALLENGE (with set_auth_challenge()),
     * ACCEPT (authenticated; set_auth_identity() names the user), REJECT (535), TEMPFAIL (454)
     * or PENDING. Registration only; E_CONFLICT if taken. */
    asiosmtpd_status (*register_auth_mechanism)(asiosmtpd_registrar *reg, asiosmtpd_str name,
                                                asiosmtpd_hook_fn fn);
    /* The next challenge of a mechanism (raw bytes; the host base64-encodes them). Copied. */
    asiosmtpd_status (*set_auth_challenge)(asiosmtpd_call *call, asiosmtpd_str challenge);
    /* The identity to authenticate as, with ACCEPT from AUTH_CHECK or a mechanism. Copied. */
    asiosmtpd_status (*set_auth_identity)(asiosmtpd_call *call, asiosmtpd_str login);
    /* The folder of the config file (absolute), to resolve relative paths in the plugin's own
     * config as the host does for its keys (docs/configuration.md). Valid during create(). */
    asiosmtpd_str (*config_dir)(asiosmtpd_registrar *reg);

    /* LMTP (RFC 2033 §4.2): in the DATA hook, the reply for the index-th accepted recipient
     * (txn_rcpt_at order), overriding the verdict's reply for that recipient only. On SMTP
     * listeners the one DATA reply is the verdict's. `code` 200..599, `text` one line under
     * set_reply()'s rules (no '\n'); copied; per recipient the last call counts. E_INVALID on an
     * index past the last recipient, a bad code or text; E_STATE outside the DATA hook.
     * As with set_reply(), a refused reply changes nothing but is remembered: unless a later
     * call for the same index succeeds, the hook's verdict (anything but PENDING; for a
     * suspended call, its complete(), which then returns E_INVALID) is a plugin error. The
     * client gets "451 4.3.0 Error: internal" for every recipient on LMTP (none of the call's
     * per-recipient replies goes out) and as the DATA reply on SMTP, and the host logs
     * event=plugin_error; never the verdict's reply (a 250, say) for a recipient the plugin
     * meant to answer otherwise. Any plugin error in DATA drops the call's per-recipient
     * replies the same way. */
    asiosmtpd_status (*set_rcpt_reply)(asiosmtpd_call *call, size_t index, uint16_t code, asiosmtpd_str text);
    /* The same for a suspended DATA hook, from ANY thread, before complete() for that token
     * (replies set with set_rcpt_reply() before suspend() stay, and count the same way).
     * E_GONE when the call already ended or timed out; E_STATE when the token is not a DATA
     * hook's. */
    asiosmtpd_status (*set_rcpt_reply_pending)(asiosmtpd_token token, size_t index, uint16_t code,
                                               asiosmtpd_str text);

    /* ---- ABI 1.3 and later ---- */

    /* Declare, in create(), that this instance edits messages (edit_message()): the host then
     * holds each message for the plugins after it. Registration only (E_FROZEN after). */
    asiosmtpd_status (*declare_editor)(asiosmtpd_registrar *reg);
    /* One change to the transaction, in the DATA hook of a declared editor (else E_STATE);
     * checked now (E_INVALID: a malformed header, address or op, nothing recorded), applied
     * when the call ends with CONTINUE or ACCEPT. Strings are copied. */
    asiosmtpd_status (*edit_message)(asiosmtpd_call *call, const asiosmtpd_edit *edit);
    /* The same for a suspended DATA call, from ANY thread, before complete() for that token.
     * E_GONE when the call already ended or timed out; E_STATE when the token is not a DATA
     * call of an editor. */
    asiosmtpd_status (*edit_message_pending)(asiosmtpd_token token, const asiosmtpd_edit *edit);
    /* The param_index-th ESMTP parameter of the rcpt_index-th recipient (txn_rcpt_at order),
     * "KEY=VALUE": the client's (DSN's NOTIFY and ORCPT, with server.enable_dsn; without it the
     * host refuses RCPT parameters with 555, as aiosmtpd) or those an editor gave with ADD_RCPT.
     * E_INVALID when out of range. Borrowed until the hook returns. asiosmtpd/dsn.hpp parses
     * the DSN ones. */
    asiosmtpd_status (*txn_rcpt_param_at)(asiosmtpd_call *call, size_t rcpt_index, size_t param_index,
                                          asiosmtpd_str *out);
    /* log() with fields: the line is the message (may be empty) followed by " key=value" for
     * each field, as the host's own lines are (so that log.format: json makes them JSON fields
     * and a postmaster can grep them). Keys [a-z0-9_] (1..32 bytes; another key is logged as
     * "field"); values are escaped as the host escapes peer text and quoted when empty or
     * containing a space. Thread-safe, like log(). */
    void (*log_fields)(asiosmtpd_ctx *ctx, asiosmtpd_call *call, int32_t level, asiosmtpd_str message,
                       const asiosmtpd_str *keys, const asiosmtpd_str *values, size_t count);
    /* State that outlives a reload (a greylisting table, rate counters), in create() only.
     * A reload creates new instances from a fresh copy of the plugin file while the old ones
     * finish their sessions; nothing else carries over. The first instance of this plugin (by
     * descriptor name) that asks for `key` gets `candidate` kept; every later instance, of this
     * or a later generation, that asks for the same key gets that same pointer back (and then
     * frees its own candidate: the host does not), for as long as some instance that asked for
     * it lives. When the last one is destroyed (after its destroy()), the host calls
     * release(data) with that instance's own function, its library still loaded. Instances of
     * two generations use the data at the same time: guard it; keep it plain data (no pointers
     * into one copy of the library's code, such as virtual functions or std::function). Put a
     * layout version in the key (1..128 bytes of [A-Za-z0-9_.:-]) when the struct may change
     * between plugin versions. Returns NULL (nothing kept) for a bad key or a NULL candidate. */
    void *(*keep_state)(asiosmtpd_registrar *reg, asiosmtpd_str key, void *candidate, void (*release)(void *data));

    /* The two below came late in 1.3: a host of 1.3 may lack them. Check the table's size
     * first: ASIOSMTPD_HAS(host, asiosmtpd_host_api, cfg_error). */

    /* Say which node of this instance's `config:` is wrong, in create() before it returns an
     * error, so that the host's message names the config file, the line and the full key:
     * "asiosmtpd.yaml:12: plugins[0].config.dealy: unknown key (did you mean 'delay'?)".
     * `node`: a node of this instance's tree (cfg_root(), cfg_get(), cfg_at()), NULL for the
     * root. `key`: empty, or a key of `node` (a map) that is wrong or missing: the message then
     * names that key (the line of the key, or of the map when the key is absent). `message`:
     * the problem, one line, without the key ("unknown key", "expected an integer, got 'x'").
     * Copied. The last report counts, and only if create() then fails; the host then prints it
     * instead of the errbuf's reason (which older hosts print: keep writing it). E_INVALID for
     * a node of another tree, E_FROZEN outside create(). Registration thread only. */
    asiosmtpd_status (*cfg_error)(asiosmtpd_registrar *reg, const asiosmtpd_cfg *node, asiosmtpd_str key,
                                  asiosmtpd_str message);
    /* 1 when this create() only checks the configuration (asiosmtpd --check-config): the
     * instance is destroyed right after, without a hook call. Check what a start would need
     * (the folder exists or could be made, the file is readable) but change nothing on disk or
     * elsewhere: make no folder, create no file, write to no server. 0 for a start or reload. */
    int32_t (*is_check_only)(asiosmtpd_registrar *reg);

    /* ---- append members here; never reorder, never remove ---- */
} asiosmtpd_host_api;

/* ------------------------------------------------------------------------------------------
 * The plugin descriptor and the entry symbol
 * ---------------------------------------------------------------------------------------- */
#define ASIOSMTPD_PF_THREAD_SAFE 0x1u /* hooks may run concurrently for different sessions */

/* Where create() writes a reason for refusing (NUL-terminated, at most cap bytes incl. NUL). */
typedef struct asiosmtpd_errbuf {
    char *buf;
    size_t cap;
} asiosmtpd_errbuf;

typedef struct asiosmtpd_plugin_descriptor {
    uint32_t struct_size;
    uint32_t abi_major;       /* ASIOSMTPD_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;       /* lowest host ABI minor the plugin needs */
    uint32_t flags;           /* ASIOSMTPD_PF_* */
    const char *name;         /* stable id, [a-z0-9_.-]+ */
    const char *version;      /* the plugin's own version */
    const char *description;  /* one line */
    /* Create one instance for one config entry: read the config, register hooks, commands and
     * keywords. Return ASIOSMTPD_OK and set *out_instance, or an error with a reason in err
     * (the host then refuses to start: "plugin X: <reason>"). Control thread. */
    asiosmtpd_status (*create)(const asiosmtpd_host_api *host, asiosmtpd_ctx *ctx,
                               asiosmtpd_registrar *reg, void **out_instance, asiosmtpd_errbuf *err);
    /* Stop the instance's threads and free it. Control thread; no hook of it runs any more. */
    void (*destroy)(void *instance);
    /* ---- ABI 1.1 and later: append members here ---- */
} asiosmtpd_plugin_descriptor;

#define ASIOSMTPD_DESCRIPTOR_V1_0_SIZE \
    (offsetof(asiosmtpd_plugin_descriptor, destroy) + sizeof(void (*)(void *)))

/* Each plugin exports exactly this one function; the major version is in its name. It returns
 * a pointer to a static descriptor and has no side effects. */
#define ASIOSMTPD_ENTRY_SYMBOL "asiosmtpd_plugin_entry_v1"
typedef const asiosmtpd_plugin_descriptor *(*asiosmtpd_entry_fn)(void);
ASIOSMTPD_EXPORT const asiosmtpd_plugin_descriptor *asiosmtpd_plugin_entry_v1(void);

#ifdef __cplusplus
}
#endif
#endif /* ASIOSMTPD_PLUGIN_H */
/* clang-format on */
