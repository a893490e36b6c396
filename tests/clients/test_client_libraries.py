"""The client libraries applications are built of, pinned and unchanged, against a live platform
and the real demo models: LangChain's ChatOpenAI and OpenAIEmbeddings, and the OpenAI Agents SDK
with its default model class (the Responses API), on both engines: our runtime and vLLM."""

import asyncio
import math
import os

import pytest
from pydantic import BaseModel

from catalog.models import BaseModel as CatalogModel
from tests.conftest import DEMO_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
EMBEDDING_MODEL = "all-minilm-l6-v2"


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(params=["builtin", "vllm"])
def platform(request, live_web, make_tenant, node_agent):
    """The demo model on our runtime, or on vLLM (both started by the pool's node agent)."""
    from serving import autoscale
    from tests.serving.test_pool_replicas import replicas, wait_until
    from tests.serving.test_vllm import INSTALLED, KEY, serve_with_vllm

    if request.param == "vllm":
        if not INSTALLED and os.environ.get("REQUIRE_VLLM") != "1":
            pytest.skip("vLLM is not installed (make vllm)")
        serve_with_vllm()
    else:
        CatalogModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=1)
    autoscale.scale_all()
    wait_until(lambda: replicas(KEY, state="ready"), 600, f"a replica: {node_agent.log()[-3000:]}")
    return live_web.url + "/v1", make_tenant("clients").key()


def test_langchain_and_an_agents_sdk_agent_on_the_platform(platform):
    # One test per engine: a vLLM replica takes about a minute to start, and both libraries share it.
    langchain_chat_tools_structured_output_and_embeddings(*platform)
    an_agents_sdk_agent_calls_its_tool_and_answers(*platform)


def langchain_chat_tools_structured_output_and_embeddings(base_url: str, key: str):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(model=DEMO_MODEL, base_url=base_url, api_key=key, temperature=0, max_retries=0)
    assert "Paris" in llm.invoke("What is the capital of France?").content
    streamed = list(llm.stream("What is the capital of France?"))
    assert "Paris" in "".join(chunk.content for chunk in streamed)

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"Sunny in {city}"

    called = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    [call] = called.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert get_weather.invoke(call["args"]).startswith("Sunny in")

    person = llm.with_structured_output(Person, method="json_schema").invoke("Invent a person.")
    assert isinstance(person, Person) and person.name

    # OpenAI-compatible servers have their own tokenizers: LangChain's docs say to turn off its
    # tiktoken pre-check (which would fetch OpenAI's vocabulary from the internet).
    embeddings = OpenAIEmbeddings(
        model=EMBEDDING_MODEL, base_url=base_url, api_key=key, check_embedding_ctx_length=False, max_retries=0
    )
    cat, kitten, car = embeddings.embed_documents(["cat", "kitten", "car"])
    assert len(cat) == 384 and embeddings.embed_query("cat") == pytest.approx(cat, abs=1e-5)

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cosine(cat, kitten) > cosine(cat, car)


def an_agents_sdk_agent_calls_its_tool_and_answers(base_url: str, key: str):
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # traces go to OpenAI's servers otherwise
    asked = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"It is sunny and 21 degrees in {city}."

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
    agent = Agent(
        name="Weather",
        instructions="You are a helpful assistant.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=DEMO_MODEL, openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert len(asked) == 1 and asked[0]  # one round trip: the tool ran once, with a city
    assert isinstance(result.final_output, str) and result.final_output.strip()
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"
