"""Outbound call campaigns: the campaign definition and contacts, the schedule (windows, retries, limits), the
dialer that runs inside ``voicebot serve``, and what a campaign call knows about its contact."""
