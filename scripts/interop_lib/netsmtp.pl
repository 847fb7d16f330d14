#!/usr/bin/perl
# A client from another ecosystem for scripts/interop: Perl's Net::SMTP (libnet), with
# IO::Socket::SSL for TLS and Authen::SASL for AUTH.
#
#   netsmtp.pl MODE HOST PORT CAFILE USER PASSWORD FROM TO MSGFILE
#
# MODE: plain | starttls | ssl (implicit TLS). USER "-": no AUTH. The server certificate
# is verified against CAFILE and HOST. Net::SMTP's transcript goes to stderr; on success
# "TLS <version> <cipher>" (when encrypted) and "QUEUED <last reply>" go to stdout, exit 0.
use strict;
use warnings;
use Net::SMTP;
use IO::Socket::SSL qw(SSL_VERIFY_PEER);

my ($mode, $host, $port, $ca, $user, $pass, $from, $to, $file) = @ARGV;
die "usage: $0 MODE HOST PORT CAFILE USER PASSWORD FROM TO MSGFILE\n" unless defined $file;
my %tls = (
    SSL_verify_mode     => SSL_VERIFY_PEER,
    SSL_ca_file         => $ca,
    SSL_verifycn_scheme => 'smtp',
    SSL_verifycn_name   => $host,
);
my $smtp = Net::SMTP->new(
    Host    => $host,
    Port    => $port,
    Hello   => 'client.test',
    Timeout => 20,
    Debug   => 1,
    ($mode eq 'ssl' ? (SSL => 1, %tls) : ()),
) or die "connect: $@\n";
if ($mode eq 'starttls') {
    $smtp->starttls(%tls) or die "STARTTLS failed: " . ($smtp->message // $IO::Socket::SSL::SSL_ERROR) . "\n";
}
if ($smtp->can('get_sslversion')) {
    print "TLS ", $smtp->get_sslversion, " ", $smtp->get_cipher, "\n";
}
if ($user ne '-') {
    $smtp->auth($user, $pass) or die "AUTH failed: " . $smtp->code . " " . $smtp->message;
}
open(my $fh, '<', $file) or die "$file: $!\n";
my $msg = do { local $/; <$fh> };
close $fh;
$smtp->mail($from) or die "MAIL refused: " . $smtp->code . " " . $smtp->message;
$smtp->to($to) or die "RCPT refused: " . $smtp->code . " " . $smtp->message;
$smtp->data or die "DATA refused: " . $smtp->code . " " . $smtp->message;
$smtp->datasend($msg);    # dot-stuffs, and sends LF as CRLF
$smtp->dataend or die "message refused: " . $smtp->code . " " . $smtp->message;
my $reply = $smtp->message;
$reply =~ s/\s+$//;
print "QUEUED ", $smtp->code, " ", $reply, "\n";
$smtp->quit;
exit 0;
