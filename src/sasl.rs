//! TODO (being written): SASL PLAIN / LOGIN decoding (pure), shared by SMTP AUTH and POP3 AUTH.
