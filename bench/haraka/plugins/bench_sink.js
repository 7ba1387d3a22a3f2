// bench_sink: accept every recipient and discard every message, like aiosmtpd's Sink
// handler and Postfix's smtp-sink. Used only by bench/run.
'use strict'

exports.hook_rcpt = function (next) {
    next(OK)
}

exports.hook_queue = function (next) {
    next(OK)
}
