"""Booking intent: the scheduling tools are offered only to customers who ask to book."""
from __future__ import annotations

import pytest

from runtime.intent import wants_booking, wants_human


@pytest.mark.parametrize("text", [
    "Quero marcar uma limpeza", "Posso agendar para sábado?", "Tem horário disponível amanhã?", "tem vaga na sexta?",
    "Preciso remarcar minha consulta", "I'd like to book an appointment", "Can I schedule a visit next week?",
    "Any free slots on Monday?", "Quiero pedir una cita", "¿Puedo reservar un turno para el lunes?",
    "Hay horarios disponibles el viernes?",
])
def test_asking_to_book_is_told(text):
    assert wants_booking([text])


@pytest.mark.parametrize("text", [
    "Qual o horário de funcionamento aos sábados?", "Quanto custa uma consulta?", "Vocês atendem convênio?",
    "What are your opening hours on Saturday?", "How much is a cleaning?", "¿Cuál es el horario del sábado?",
    "Qual a marca do implante?", "Onde fica a clínica?",
])
def test_questions_about_hours_and_prices_are_not_bookings(text):
    assert not wants_booking([text])


def test_an_earlier_message_of_the_booking_still_counts():
    assert wants_booking(["amanhã às 10h", "Quero agendar uma avaliação"])
    assert not wants_booking(["amanhã às 10h"])


@pytest.mark.parametrize("text, expected", [
    ("Quero falar com um atendente", True), ("Quero fazer uma reclamação", True), ("I want to talk to a human", True),
    ("Quiero hablar con alguien", True), ("Onde fica a clínica?", False), ("Quanto custa uma limpeza?", False),
    ("Vocês atendem convênio?", False), ("What time do you open?", False),
    ("Pode me transferir para o financeiro?", True), ("Can you transfer me to sales?", True),
    ("Aceitam transferência bancária?", False), ("Can I pay by wire transfer?", False),
    ("Quero ser transferida para o suporte", True), ("Transfira-me para a recepção", True),
    ("¿Me puede transferir con ventas?", True), ("Can I get transferred to billing?", True),
    ("Quero transferir R$ 100 para a conta da Maria", False), ("I would like to make a transfer to Philip.", False),
    ("How long will it take for the transfer to go through?", False), ("Quiero transferir dinero a mi hermana", False),
    ("Atendente", True), ("human please", True), ("Is there a human I can talk to?", True),
    ("Tem algum atendente disponível?", True), ("Quero o gerente", True), ("get me a live agent", True),
    ("Necesito un agente", True), ("Preciso conversar com alguém", True),
])
def test_asking_for_a_person_is_told(text, expected):
    assert wants_human([text]) is expected


@pytest.mark.parametrize("text", [
    "Are you a human or a bot?", "Você é humano?", "When was the European Convention on Human Rights signed?",
    "Quais são os direitos de todo ser humano?", "Who is the general manager of the team?",
    "Did the manager approve my request?", "Where is the front desk?", "I need someone to fix my sink",
    "Who is the best real estate agent in town?", "O setor de recursos humanos abre sábado?",
])
def test_mentioning_people_is_not_asking_for_one(text):
    assert not wants_human([text])


