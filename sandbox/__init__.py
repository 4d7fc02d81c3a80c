"""The provider sandbox: a local stand-in for the third parties Carillon cannot reach.

It speaks each provider's real wire protocol (SMTP, Twilio's Messages API with signed
status callbacks, Mixpanel's /track and /import), records what it receives, and has
knobs for latency, errors and lost callbacks. It is not part of Carillon: production
talks to the real providers with the same client libraries.
"""
