//! Real replies, as mxrelay records them (`Reply::summary`: code, enhanced code, the lines
//! joined with " / "), and the reasons mxrelay writes itself.

use super::*;

/// (status as the event has it, or none for a deferral; text; category).
#[rustfmt::skip]
const CASES: &[(Option<&str>, &str, Category)] = &[
    // Gmail.
    (Some("5.1.1"), "550 5.1.1 The email account that you tried to reach does not exist. Please try / double-checking the recipient's email address for typos or / unnecessary spaces. For more information, go to / https://support.google.com/mail/?p=NoSuchUser 41be03b00d2f7-b8f1c2a3e4d5si123456a.123 - gsmtp", InvalidRecipient),
    (Some("5.2.1"), "550 5.2.1 The email account that you tried to reach is disabled. https://support.google.com/mail/?p=DisabledUser - gsmtp", InvalidRecipient),
    (None, "gmail-smtp-in.l.google.com[142.250.27.26]:25 said: 452 4.2.2 The recipient's inbox is out of storage space. Please direct the recipient to / https://support.google.com/mail/?p=OverQuotaTemp - gsmtp", MailboxFull),
    (None, "gmail-smtp-in.l.google.com[142.250.27.26]:25 said: 452 4.2.1 The recipient you are trying to contact is receiving mail at a rate that / prevents additional messages from being delivered. - gsmtp", RateLimited),
    (Some("5.7.1"), "550 5.7.1 [192.0.2.7 12] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. - gsmtp", SpamBlock),
    (None, "gmail-smtp-in.l.google.com[142.250.27.26]:25 said: 421 4.7.28 [192.0.2.7 15] Our system has detected an unusual rate of / unsolicited mail originating from your IP address. To protect our / users from spam, mail sent from your IP address has been temporarily / rate limited. - gsmtp", RateLimited),
    (Some("5.7.26"), "550 5.7.26 This mail has been blocked because the sender is unauthenticated. / Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp", SenderAuth),
    (Some("5.7.26"), "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. - gsmtp", SenderAuth),
    (Some("5.7.25"), "550 5.7.25 [192.0.2.7] The IP address sending this message does not have a / PTR record setup, or the corresponding forward DNS entry does not / point to the sending IP. - gsmtp", Policy),
    (Some("5.7.1"), "550 5.7.1 The user or domain that you are sending to (or from) has a policy that / prohibited the mail that you sent. - gsmtp", Policy),
    (Some("5.2.3"), "552 5.2.3 Your message exceeded Google's message size limits. - gsmtp", MessageSize),
    (None, "gmail-smtp-in.l.google.com[142.250.27.26]:25 said: 421 4.7.0 Try again later, closing connection. (EHLO) - gsmtp", RateLimited),
    // Outlook and Exchange Online.
    (Some("5.5.0"), "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [AM4PEPF00027A5F.eurprd04.prod.outlook.com]", InvalidRecipient),
    (Some("5.1.10"), "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", InvalidRecipient),
    (Some("5.4.1"), "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DM6NAM11FT014.eop-nam11.prod.protection.outlook.com]", InvalidRecipient),
    (Some("5.7.606"), "550 5.7.606 Access denied, banned sending IP [192.0.2.7]. To request removal from this list please visit https://sender.office.com/ and follow the directions.", SpamBlock),
    (Some("5.7.1"), "550 5.7.1 Unfortunately, messages from [192.0.2.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", SpamBlock),
    (Some("5.7.708"), "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", SpamBlock),
    (Some("5.7.509"), "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.", SenderAuth),
    (Some("5.7.515"), "550 5.7.515 Access denied, sending domain example.com doesn't meet the required authentication level.", SenderAuth),
    (Some("5.7.133"), "550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required; Delivery restriction check failed as sender not authenticated", Policy),
    (None, "example-com.mail.protection.outlook.com[52.101.68.1]:25 said: 451 4.7.500 Server busy. Please try again later from [192.0.2.7]. (S77714)", RateLimited),
    (Some("5.2.2"), "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", MailboxFull),
    (Some("5.3.4"), "552 5.3.4 Message size exceeds fixed maximum message size", MessageSize),
    // Yahoo and AOL.
    (Some("5.0.0"), "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", InvalidRecipient),
    (Some("5.0.0"), "552 1 Requested mail action aborted, mailbox not found", InvalidRecipient),
    (None, "mta6.am0.yahoodns.net[67.195.204.72]:25 said: 421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", RateLimited),
    (Some("5.7.1"), "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.7, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", SpamBlock),
    (Some("5.7.9"), "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes", Policy),
    (Some("5.7.9"), "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.", SenderAuth),
    // Apple iCloud.
    (Some("5.1.1"), "550 5.1.1 <someone@icloud.com>: user does not exist", InvalidRecipient),
    (Some("5.2.2"), "552 5.2.2 <someone@icloud.com>: user is over quota", MailboxFull),
    (Some("5.7.1"), "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", Policy),
    (Some("5.7.1"), "550 5.7.1 Mail from IP 192.0.2.7 was rejected due to listing in Spamhaus SBL. For details please see http://www.spamhaus.org/query/bl?ip=192.0.2.7", SpamBlock),
    (Some("5.7.0"), "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.7", SpamBlock),
    // Postfix.
    (Some("5.1.1"), "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in local recipient table", InvalidRecipient),
    (Some("5.1.1"), "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table", InvalidRecipient),
    (Some("5.7.1"), "554 5.7.1 <x@example.com>: Relay access denied", Policy),
    (None, "mx.example.com[192.0.2.1]:25 said: 450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]", Policy),
    (Some("5.7.1"), "554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.7", SpamBlock),
    (None, "mx.example.com[192.0.2.1]:25 said: 452 4.3.1 Insufficient system storage", Other),
    (None, "mx.example.com[192.0.2.1]:25 said: 450 4.2.0 <x@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html", Greylisted),
    (None, "mx.example.com[192.0.2.1]:25 greeted with 421 4.7.0 mx.example.com Error: too many connections from 192.0.2.7", RateLimited),
    (Some("5.1.0"), "550 5.1.0 <a@nonexistent.example>: Sender address rejected: Domain not found", Policy),
    (Some("5.2.2"), "552 5.2.2 <x@example.com>: Quota exceeded (mailbox for user is full)", MailboxFull),
    (None, "mx.example.com[192.0.2.1]:25 said: 452 4.5.3 Error: too many recipients", RateLimited),
    // Exim.
    (Some("5.0.0"), "550 Unrouteable address", InvalidRecipient),
    (Some("5.0.0"), "550 Verification failed for <a@client.example> / Unrouteable address / Sender verify failed", Policy),
    (Some("5.0.0"), "550 Administrative prohibition", Policy),
    (Some("5.0.0"), "552 Message size exceeds maximum permitted", MessageSize),
    (None, "mx.example.org[192.0.2.2]:25 said: 451 Temporary local problem - please try later", Other),
    (Some("5.0.0"), "550 rejected because 192.0.2.7 is in a black list at zen.spamhaus.org", SpamBlock),
    (None, "mx.example.org[192.0.2.2]:25 greeted with 421 Too many concurrent SMTP connections; please try again later.", RateLimited),
    (Some("5.0.0"), "550 This message scored 15.2 spam points.", SpamBlock),
    (Some("5.0.0"), "550 mailbox is full", MailboxFull),
    // Proofpoint.
    (Some("5.7.1"), "554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using Proofpoint Dynamic Reputation", SpamBlock),
    (Some("5.1.8"), "553 5.1.8 <a@client.example>... Domain of sender address a@client.example does not exist", Policy),
    (Some("5.1.1"), "550 5.1.1 User Unknown", InvalidRecipient),
    // Mimecast.
    (Some("5.0.0"), "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [OBnT5OUmOzGQ1yLs2Bx8wA.uk17]", InvalidRecipient),
    (Some("5.0.0"), "554 Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554 [kbXUBnRvP-qzSUZ2pEhUHA.us174]", Policy),
    (Some("5.0.0"), "550 Rejected by header based Anti-Spoofing policy: a@client.example - https://community.mimecast.com/docs/DOC-1369#550", SenderAuth),
    (None, "eu-smtp-inbound-1.mimecast.com[195.130.217.1]:25 said: 421 Throttling failure: Daily message quota exceeded", RateLimited),
    (Some("5.0.0"), "550 Envelope blocked - User Entry - https://community.mimecast.com/docs/DOC-1369#550", Policy),
    (None, "eu-smtp-inbound-1.mimecast.com[195.130.217.1]:25 said: 451 Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451", Other),
    // A host whose name says spam does not make every reply a spam block.
    (Some("5.1.1"), "550 5.1.1 <x@example.com>... User unknown", InvalidRecipient),
    (None, "mx.spamexperts.com[192.0.2.9]:25 said: 451 4.7.1 Greylisted, try again in 5 minutes", Greylisted),
    (None, "connect to mx.spamexperts.com[192.0.2.9]:25 failed: Connection refused (os error 111)", Connection),
    // The reasons mxrelay writes itself (delivery/attempt, delivery/route, smtp/client,
    // delivery/scheduler/outcome).
    (None, "connect to mx.example.com[192.0.2.1]:25 failed: Connection refused (os error 111)", Connection),
    (None, "connect to mx.example.com[192.0.2.1]:25 failed: connection timed out", Connection),
    (None, "mx.example.com[192.0.2.1]:25 timed out: no reply within 300s", Connection),
    (None, "mx.example.com[192.0.2.1]:25 timed out: it stopped reading", Connection),
    (None, "mx.example.com[192.0.2.1]:25 closed the connection", Connection),
    (None, "reading from mx.example.com[192.0.2.1]:25 failed: Connection reset by peer (os error 104)", Connection),
    (None, "write to mx.example.com[192.0.2.1]:25 failed: Broken pipe (os error 32)", Connection),
    (None, "sending the message to mx.example.com[192.0.2.1]:25 failed: Broken pipe (os error 32)", Connection),
    (None, "MX lookup for example.com failed: temporary dns failure: timeout from 192.0.2.53:53", Dns),
    (None, "MX lookup for example.com failed: temporary dns failure: SERVFAIL from 192.0.2.53:53", Dns),
    (None, "address lookup for mx.example.com failed: temporary dns failure: timeout from 192.0.2.53:53", Dns),
    (None, "cannot resolve smarthost.example: failed to lookup address information: Name or service not known", Dns),
    (None, "mx.example.com has no address records", Dns),
    (Some("5.1.2"), "domain nonexistent.example does not exist", InvalidRecipient),
    (Some("5.1.2"), "bad domain a..b: empty label in \"a..b\"", InvalidRecipient),
    (Some("5.1.10"), "example.com does not accept mail (null MX)", InvalidRecipient),
    (Some("5.1.2"), "example.com has no MX and no address records", InvalidRecipient),
    (None, "TLS handshake with mx.example.com[192.0.2.1]:25 failed: error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed", Tls),
    (None, "mx.example.com[192.0.2.1]:25 refused STARTTLS: 454 4.7.0 TLS not available due to local problem", Tls),
    (None, "TLS is required but mx.example.com[192.0.2.1]:25 does not offer STARTTLS", Tls),
    (None, "not sending credentials to smtp.example.com[192.0.2.1]:587 without TLS", Tls),
    (None, "mx.example.com[192.0.2.1]:25 sent data before the TLS handshake", Tls),
    (None, "authentication as relay at smtp.example.com[192.0.2.1]:587 failed: 535 5.7.8 Authentication credentials invalid", Auth),
    (None, "smtp.example.com[192.0.2.1]:587 offers no AUTH PLAIN or LOGIN", Auth),
    (None, "smtp.example.com[192.0.2.1]:587 said to MAIL: 530 5.7.0 Authentication required", Auth),
    (Some("5.3.4"), "mx.example.com[192.0.2.1]:25: message size 30000000 exceeds the next hop's limit of 10240000 bytes", MessageSize),
    (Some("5.6.7"), "mx.example.com[192.0.2.1]:25: the next hop does not support SMTPUTF8, needed for non-ASCII addresses", Other),
    (None, "mx.example.com[192.0.2.1]:25 sent a malformed reply: BadCode", Other),
    (None, "no usable host", Other),
    (None, "mx mx1.example.com,mx2.example.com is unreachable: connect to mx1.example.com[192.0.2.1]:25 failed: Connection refused (os error 111)", Connection),
    (None, "smarthost is unreachable", Connection),
    (None, "mx example.com is unreachable: mx1.example.com[192.0.2.1]:25 greeted with 421 4.7.0 Too many connections", RateLimited),
    (None, "cannot open the queued message: No such file or directory (os error 2)", Other),
    (Some("4.4.7"), "message expired after 5d in the queue; last error: connect to mx.example.com[192.0.2.1]:25 failed: Connection refused (os error 111)", Connection),
    (Some("4.4.7"), "message expired after 5d in the queue; last error: no attempt succeeded", Other),
    (Some("5.0.0"), "", Other),
    (Some("5.1.1"), "", InvalidRecipient),
    (Some("4.4.1"), "", Connection),
];

#[test]
fn real_replies() {
    let mut wrong = Vec::new();
    for (status, text, want) in CASES {
        let got = categorize(*status, text);
        if got != *want {
            wrong.push(format!("{status:?} {text:?}: {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_category_has_a_case_and_a_unique_label() {
    for c in Category::ALL {
        assert!(
            CASES.iter().any(|(_, _, want)| *want == c),
            "no case for {c:?}"
        );
        assert_eq!(Category::ALL[c.index()], c);
        let same = Category::ALL.iter().filter(|o| o.label() == c.label());
        assert_eq!(same.count(), 1);
    }
}

#[test]
fn codes_and_names() {
    assert_eq!(subject_detail("4.7.1"), Some("7.1"));
    assert_eq!(subject_detail("5.1.10;"), Some("1.10"));
    assert_eq!(subject_detail("3.1.1"), None);
    assert_eq!(subject_detail("1.2.3.4"), None);
    assert_eq!(subject_detail("5.1"), None);
    for name in [
        "mx.example.com[192.0.2.1]:25",
        "<x@example.com>:",
        "https://x/y",
        "zen.spamhaus.org;",
        "example.com",
    ] {
        assert!(is_name(name), "{name}");
    }
    for word in [
        "5.1.1",
        "192.0.2.7",
        "exist.",
        "[TSS04]",
        "[192.0.2.7]",
        "Spamhaus's",
    ] {
        assert!(!is_name(word), "{word}");
    }
}
