"""The pam-mfa wire protocol (docs/protocol.md), shared by the daemon and the CLI.

Both ``mfad`` and ``mfa_cli`` import it, and it imports nothing but the
standard library (tests/test_layering.py checks both rules), so a change to the
wire is made here, once, for both ends:

* ``errors``: ProtocolError (the framing is broken), BadMessage (a frame whose
  content is not a control message) and ErrorCode, the control socket's error codes;
* ``framing``: the length-prefixed frame both sockets carry (MAX_FRAME, encode,
  read_frame, recv_frame_blocking);
* ``frametypes``: the frame type letters of both sockets (T) and the RESULT
  outcomes of the PAM socket (Outcome);
* ``control``: the control socket's codec: requests and responses to and from
  frames, and the one frame budget by which streamed answers are chunked;
* ``events``: the audit trail's event, outcome and reason names, which mfad
  writes and `mfa audit` reads.

What is not wire stays out: the user-name rule is mfad's
(mfad.identity.valid_user_name), the client's connection handling mfa_cli's
(mfa_cli.client).
"""
