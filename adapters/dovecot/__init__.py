"""The new server as a Dovecot that doveadm reaches: copies that keep the old UIDs and UIDVALIDITY."""
