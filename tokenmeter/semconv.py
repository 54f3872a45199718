"""Every telemetry name tokenmeter emits or reads, in one place.

GenAI names follow the OpenTelemetry GenAI semantic conventions
(open-telemetry/semantic-conventions-genai, "Development" stability).
Names under ``tokenmeter.*`` are this project's own. No other module spells
an attribute, metric or baggage name: import it from here.
"""

from typing import Final

# --- GenAI semantic conventions: span attributes ------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
# Token types beyond input/output, as the servers report them (docs/catalog.md "Token types").
# Each is a part of its total: cache reads and writes are included in gen_ai.usage.input_tokens,
# reasoning in gen_ai.usage.output_tokens. Set only when the server reported the field.
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_USAGE_AUDIO_INPUT_TOKENS: Final = "gen_ai.usage.audio.input_tokens"
GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS: Final = "gen_ai.usage.audio.output_tokens"
GEN_AI_USAGE_IMAGE_INPUT_TOKENS: Final = "gen_ai.usage.image.input_tokens"
# On the usage token counter: which part of the input (cache) or of the output (phase) a point counts.
# Present only when the server reported the split; the parts of one call add up to its total.
GEN_AI_TOKEN_CACHE: Final = "gen_ai.token.cache"
GEN_AI_TOKEN_PHASE: Final = "gen_ai.token.phase"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
ENDUSER_ID: Final = "enduser.id"

# --- Resource attributes (OpenTelemetry semantic conventions) ------------------
SERVICE_NAME: Final = "service.name"
SERVICE_INSTANCE_ID: Final = "service.instance.id"  # a restarted process is a new counter series

# gen_ai.operation.name values
OPERATION_CHAT: Final = "chat"
OPERATION_TEXT_COMPLETION: Final = "text_completion"
OPERATION_EMBEDDINGS: Final = "embeddings"

# gen_ai.token.type values
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

# gen_ai.token.cache values (input tokens) and gen_ai.token.phase values (output tokens)
TOKEN_CACHE_NONE: Final = "none"
TOKEN_CACHE_READ: Final = "read"
TOKEN_CACHE_CREATION: Final = "creation"
TOKEN_PHASE_RESPONSE: Final = "response"
TOKEN_PHASE_REASONING: Final = "reasoning"

# gen_ai.provider.name for OpenAI-compatible endpoints
PROVIDER_OPENAI: Final = "openai"
PROVIDER_ANTHROPIC: Final = "anthropic"  # the Anthropic SDK's Messages API (a value of the GenAI registry)
# gen_ai.provider.name of clients the conventions' registry does not list: the provider's own name, as it asks
PROVIDER_OLLAMA: Final = "ollama"
PROVIDER_DASHSCOPE: Final = "dashscope"

# --- GenAI semantic conventions: metrics ---------------------------------------
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
# Bucket boundaries the conventions prescribe for the two histograms.
TOKEN_USAGE_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
OPERATION_DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)

# --- tokenmeter attributes -----------------------------------------------------
TM_DEPARTMENT: Final = "tokenmeter.department"
TM_APP: Final = "tokenmeter.app"
# Where the billed counts (gen_ai.usage.*) come from: server | tokenizer | estimate.
TM_USAGE_SOURCE: Final = "tokenmeter.usage.source"
# Counts made locally, kept beside server counts so drift can be seen.
TM_LOCAL_INPUT_TOKENS: Final = "tokenmeter.usage.local_input_tokens"
TM_LOCAL_OUTPUT_TOKENS: Final = "tokenmeter.usage.local_output_tokens"
TM_LOCAL_SOURCE: Final = "tokenmeter.usage.local_source"
TM_TOKENIZER: Final = "tokenmeter.tokenizer"
# Cost of the call as a decimal string (exact), its currency and flags.
TM_COST: Final = "tokenmeter.cost"
TM_COST_CURRENCY: Final = "tokenmeter.cost.currency"
TM_COST_VIRTUAL: Final = "tokenmeter.cost.virtual"
TM_COST_UNPRICED: Final = "tokenmeter.cost.unpriced"
# Which price the cost was computed with: the catalog price's effective date (ISO, UTC; absent for an
# undated price) and the input-length tier (0-based; absent for a price without tiers).
TM_PRICE_FROM: Final = "tokenmeter.price.from"
TM_PRICE_TIER: Final = "tokenmeter.price.tier"
TM_PROMPT_HASH: Final = "tokenmeter.prompt.hash"
TM_COMPLETION_HASH: Final = "tokenmeter.completion.hash"
# "hmac-sha256" when TOKENMETER_HASH_KEY is set, "sha256" otherwise.
TM_HASH_ALGORITHM: Final = "tokenmeter.hash.algorithm"
TM_STREAM: Final = "tokenmeter.stream"
# A call to one of your own services that forwards it (TOKENMETER_HOP_SERVERS): not billed here.
TM_HOP: Final = "tokenmeter.hop"
TM_REQUESTED_MODEL: Final = "tokenmeter.model.requested"
TM_EFFECTIVE_MODEL: Final = "tokenmeter.model.effective"
TM_QUOTA_DECISION: Final = "tokenmeter.quota.decision"
TM_QUOTA_BUDGET: Final = "tokenmeter.quota.budget"
TM_QUOTA_RATIO: Final = "tokenmeter.quota.ratio"
# True when the enforcer could not answer and the call went ahead (TOKENMETER_FAIL_MODE=open).
TM_QUOTA_FAIL_OPEN: Final = "tokenmeter.quota.fail_open"
# quota decision values besides allow / warn / downgrade / degrade / deny
QUOTA_UNAVAILABLE: Final = "unavailable"

# The answer a call helped produce, as the app names it (Chatchat's message_id, or the app's
# own id given to tokenmeter.attribution(message=...)): ratings are joined to calls by it.
TM_MESSAGE_ID: Final = "tokenmeter.message.id"
# An experiment of the policy (docs/experiments.md) and the arm this call was in.
TM_EXPERIMENT: Final = "tokenmeter.experiment"
TM_EXPERIMENT_ARM: Final = "tokenmeter.experiment.arm"
ARM_CONTROL: Final = "control"
ARM_CANDIDATE: Final = "candidate"

# --- routing (docs/routing.md): what the app knew of the question, and the rule that chose the model ---
# The policy's routing rule that chose the model (absent: no rule routed the call) and its tier.
TM_ROUTE_RULE: Final = "tokenmeter.route.rule"
TM_ROUTE_TIER: Final = "tokenmeter.route.tier"
# The question's intent, as the app's intent classifier named it (rules or a trained classifier).
TM_ROUTE_INTENT: Final = "tokenmeter.route.intent"
# Length in characters of the question (the request's last user message) and the user turns in the request.
TM_QUESTION_CHARS: Final = "tokenmeter.question.chars"
TM_CONVERSATION_DEPTH: Final = "tokenmeter.conversation.depth"
# Characters of text in all the request's messages: with the question's, the share of context in the input.
TM_PROMPT_CHARS: Final = "tokenmeter.prompt.chars"
# Retrieved passages and the best passage's score, where the app reports them (tokenmeter.retrieval()).
TM_RETRIEVAL_PASSAGES: Final = "tokenmeter.retrieval.passages"
TM_RETRIEVAL_TOP_SCORE: Final = "tokenmeter.retrieval.top_score"
# The app's HTTP route serving the request that made the call (e.g. /chat/kb_chat).
TM_APP_ROUTE: Final = "tokenmeter.app.route"
# A stream the caller stopped reading (closed or dropped) before its last chunk.
TM_STREAM_INCOMPLETE: Final = "tokenmeter.stream.incomplete"
# The Batch API batch a call ran in (metered from its results; priced at the price's batch share).
TM_BATCH_ID: Final = "tokenmeter.batch.id"

# --- the repeat-answer cache (docs/answer-cache.md) ---------------------------------
# True: the answer came from the cache, no LLM call was made (billed tokens 0, cost 0).
TM_CACHE_HIT: Final = "tokenmeter.cache.hit"
# What the cached call cost when it was made: saved by this hit (cost in tokenmeter.cost.currency).
TM_CACHE_SAVED_INPUT_TOKENS: Final = "tokenmeter.cache.saved.input_tokens"
TM_CACHE_SAVED_OUTPUT_TOKENS: Final = "tokenmeter.cache.saved.output_tokens"
TM_CACHE_SAVED_COST: Final = "tokenmeter.cache.saved.cost"

# --- ratings: one OTel log record (event) per rating of an answer -------------------
EVENT_FEEDBACK: Final = "tokenmeter.feedback"
# Also set as an attribute: log pipelines that drop the record's event name keep it.
EVENT_NAME: Final = "event.name"
# 0 to 100 (Chatchat's feedback_score scale).
TM_FEEDBACK_SCORE: Final = "tokenmeter.feedback.score"
# HMAC of the rater's reason text; the text itself only with content capture.
TM_FEEDBACK_REASON_HASH: Final = "tokenmeter.feedback.reason.hash"
TM_FEEDBACK_REASON: Final = "tokenmeter.feedback.reason"

# usage source values
SOURCE_SERVER: Final = "server"
SOURCE_TOKENIZER: Final = "tokenizer"
SOURCE_ESTIMATE: Final = "estimate"

# --- tokenmeter metrics (the accounting source; cumulative counters) -----------
METRIC_USAGE_TOKENS: Final = "tokenmeter.usage.tokens"
# Integer count of billionths of the currency unit in tokenmeter.cost.currency:
# integers add exactly, floats would not.
METRIC_USAGE_COST: Final = "tokenmeter.usage.cost"
METRIC_USAGE_CALLS: Final = "tokenmeter.usage.calls"
COST_UNITS_PER_CURRENCY_UNIT: Final = 1_000_000_000
# Quota decisions the app received, by tokenmeter.quota.decision (and fail_open).
METRIC_QUOTA_DECISIONS: Final = "tokenmeter.quota.decisions"

# --- W3C baggage keys carrying attribution across process hops -----------------
BAGGAGE_USER: Final = ENDUSER_ID
BAGGAGE_DEPARTMENT: Final = TM_DEPARTMENT
BAGGAGE_APP: Final = TM_APP
BAGGAGE_SESSION: Final = GEN_AI_CONVERSATION_ID
BAGGAGE_MESSAGE: Final = TM_MESSAGE_ID

# Instrumentation scope name for tracer and meter.
INSTRUMENTATION_SCOPE: Final = "tokenmeter"
