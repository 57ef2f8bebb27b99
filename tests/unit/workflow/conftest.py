import pytest

ARTICLE_WRITER = """\
name: article-writer
version: 3
inputs: {topic: {type: string}}
defaults: {model: openai/gpt-4o-mini, retry: {attempts: 3}, timeout: 60s}
budget: {max_usd: 0.50}
nodes:
  - {id: research, type: llm, prompt: "List 5 facts about {topic}", output: {facts: list[string]}}
  - {id: write, type: llm, model: anthropic/claude-sonnet-4, fallbacks: [ollama_chat/llama3.1],
     prompt: "Write about {topic} using {facts}", output: {draft: string}}
  - {id: review, type: llm, prompt: "Score 1-10: {draft}", output: {score: integer}}
  - {id: approve, type: approval, message: "Publish?"}
  - {id: publish, type: agent, requires: [shell], task: {tool: shell, command: "echo ok"}}
edges:
  - {from: research, to: write}
  - {from: write, to: review}
  - {from: review, to: write, when: "score < 7", max_iterations: 3}
  - {from: review, to: approve, when: "score >= 7"}
  - {from: approve, to: publish}
"""


@pytest.fixture
def article_writer() -> str:
    return ARTICLE_WRITER
